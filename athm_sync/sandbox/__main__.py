"""``python -m athm_sync.sandbox``: run the fake ATH Móvil server until Ctrl-C."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from athm_sync.sandbox.server import SandboxServer


class _ArgumentError(Exception):
    pass


class _Parser(argparse.ArgumentParser):
    # argparse prints usage and exits on its own; we want one line and exit status 2 from main().
    def error(self, message: str) -> None:  # type: ignore[override]
        raise _ArgumentError(message)


def _parser() -> _Parser:
    parser = _Parser(
        prog="python -m athm_sync.sandbox",
        description="Run a fake ATH Móvil eCommerce API for tests and development.",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on")
    parser.add_argument("--port", type=int, default=8765, help="port (0 picks a free one)")
    parser.add_argument(
        "--latency-ms", type=float, default=0.0, help="delay added to every API call"
    )
    parser.add_argument("--public-token", default="sandbox-public-token")
    parser.add_argument("--private-token", default="sandbox-private-token")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Serve until interrupted; return 0, or 2 (with one line on stderr) for bad arguments."""
    try:
        args = _parser().parse_args(argv)
        if not 0 <= args.port <= 65535:
            raise _ArgumentError(f"--port must be between 0 and 65535, not {args.port}")
        if args.latency_ms < 0:
            raise _ArgumentError(f"--latency-ms cannot be negative, not {args.latency_ms:g}")
        if not args.public_token or not args.private_token:
            raise _ArgumentError("--public-token and --private-token cannot be empty")
        try:
            server = SandboxServer(
                host=args.host,
                port=args.port,
                public_token=args.public_token,
                private_token=args.private_token,
                latency=args.latency_ms / 1000,
            )
        except OSError as exc:
            raise _ArgumentError(
                f"cannot listen on {args.host}:{args.port}: {exc.strerror or exc}"
            ) from None
    except _ArgumentError as exc:
        print(f"athm-sandbox: error: {exc}", file=sys.stderr)
        return 2

    print(f"ATH Móvil sandbox listening on {server.url}")
    print(f"public token:  {args.public_token}")
    print(f"private token: {args.private_token}")
    print("Django settings:")
    print(
        f'ATHM_SYNC = {{"API_BASE_URL": "{server.url}", "REPORT_BASE_URL": "{server.url}", '
        f'"PUBLIC_TOKEN": "{args.public_token}", "PRIVATE_TOKEN": "{args.private_token}"}}'
    )
    print(f"The customer's phone: {server.phone_url}")
    print(f"Button script (CHECKOUT_BUTTON_SCRIPT_URL): {server.button_script_url}")
    print(f"Control API: {server.url}/sandbox/ (Ctrl-C to stop)", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        print("\nstopping", file=sys.stderr)
    finally:
        server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
