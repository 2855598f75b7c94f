"""The peer of the benchmarks: django-athm 1.0.2's own per-payment status refresh.

django-athm (https://pypi.org/project/django-athm/) refreshes one payment at a time with
``PaymentService.sync_status(payment)`` (``django_athm/services/payment_service.py``); its
``status`` view calls it once per browser poll. It ships no command or function that loops over
pending payments (its ``athm_sync`` command reconciles COMPLETED rows from the transaction
report, another API), so the run below loops over the rows itself, one call per row, in order.

This file has two roles:

- imported by ``scripts/bench.py`` (the project's ``.venv``; only the standard library at
  import time): :func:`ensure_peer_python` builds ``.venv-peer`` with django-athm 1.0.2 in it,
  and :func:`run_peer` runs this file there as a child process and returns its JSON report;
- run as ``python scripts/_peer.py --api-base URL --public-token T --private-token T
  --payments FILE`` under ``.venv-peer``: a minimal in-process Django (SQLite file in a
  temporary folder), one django-athm ``Payment`` row per given payment as
  ``PaymentService.initiate`` leaves it (OPEN, the given ecommerce id and total), then the timed
  loop of ``sync_status`` calls. One JSON object on stdout.

What the child patches, in itself only: python-athm hard-codes ``BASE_URL =
"https://payments.athmovil.com"`` (athm/constants.py:33) and ``ATHMovilClient.__init__`` binds it
as the default of its ``base_url`` parameter when the class is defined (athm/client.py:62);
``PaymentService.get_client`` never passes one (payment_service.py:27-30), and
``athm/__init__.py`` imports ``athm.client`` at once, so changing the constant would come too
late. The child therefore replaces that one bound default, the ``base_url`` entry of
``ATHMovilClient.__init__.__defaults__``, with ``--api-base`` (after checking it still holds the
production URL), and asserts that ``PaymentService.get_client().base_url`` is the sandbox's.
Nothing else in either package is changed. On top of that, a guard on
``socket.socket.connect``/``connect_ex`` and ``socket.getaddrinfo`` refuses any non-loopback
address or host name, and proxy variables are dropped from the environment, so no request (not
even a DNS query) leaves 127.0.0.1.
"""

from __future__ import annotations

import argparse
import contextlib
import ipaddress
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import traceback
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

PEER_PACKAGE = "django-athm==1.0.2"
PEER_FUNCTION = "django_athm.services.payment_service.PaymentService.sync_status"
PRODUCTION_BASE_URL = "https://payments.athmovil.com"  # athm/constants.py:33
VENV_NAME = ".venv-peer"
STAMP_NAME = ".installed-peer"
# django-athm 1.0.2 declares only ``athm~=0.4.1`` (which brings httpx and pydantic), not Django;
# the peer gets the Django release the calling interpreter has, so both sides run the same one.
DJANGO_FALLBACK = "Django>=5.2,<7"
_PROXY_VARIABLES = frozenset({"http_proxy", "https_proxy", "all_proxy", "ws_proxy", "wss_proxy"})
_FAILED_LOOKUP = "[django-athm] Failed to check remote status"  # payment_service.py:280

DOES = (
    "Skips a row already COMPLETED or CANCEL locally; otherwise builds a new ATHMovilClient "
    "(a new httpx.Client, so a new TCP connection per call), POSTs findPayment once, and when "
    "the remote ecommerceStatus is CANCEL, or CONFIRM while the row is OPEN, saves that status "
    "with save(update_fields=['status', 'updated_at']) "
    "(payment_service.py:142-151, 265-305; athm/client.py:214-237)."
)
DOES_NOT = (
    "It never records COMPLETED (no such key in _REMOTE_STATUS_MAP, so a paid payment stays "
    "OPEN or CONFIRM locally), fires no signal (only webhook_processor.py sends them), takes no "
    "lock and opens no transaction (no select_for_update, unlike cancel and refund), never "
    "compares the answer's total or ecommerceId with the row, stores no reference number, fee "
    "or customer data, and swallows every API or network error into a logged warning, "
    "returning the old status (payment_service.py:258-263, 277-281, 286-288)."
)


# -- role 1: the parent side, imported by bench.py (standard library only) ------------------


def _venv_python(venv: Path) -> Path:
    return venv / ("Scripts/python.exe" if os.name == "nt" else "bin/python")


def _django_requirement() -> str:
    from importlib import metadata

    try:
        return f"Django=={metadata.version('Django')}"
    except metadata.PackageNotFoundError:
        return DJANGO_FALLBACK


def peer_requirements() -> list[str]:
    """What ``pip install`` gets in ``.venv-peer``: django-athm 1.0.2 and our Django."""
    return [PEER_PACKAGE, _django_requirement()]


def _last_line(*texts: str | None) -> str:
    for text in texts:
        lines = [line.strip() for line in (text or "").splitlines() if line.strip()]
        if lines:
            return lines[-1]
    return "no output"


def _setup_step(command: list[str], what: str) -> None:
    try:
        done = subprocess.run(command, capture_output=True, text=True, check=False)  # noqa: S603
    except OSError as exc:
        raise RuntimeError(f"{what} failed: {exc}") from None
    if done.returncode != 0:
        detail = _last_line(done.stderr, done.stdout)
        raise RuntimeError(f"{what} failed (exit status {done.returncode}): {detail}")


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """An exclusive lock on ``path``, so two benchmark runs do not build the venv at once."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not a POSIX system
        yield
        return
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def ensure_peer_python(root: Path) -> Path:
    """The python of ``root/.venv-peer``, created with django-athm 1.0.2 the first time.

    Reused when its stamp file says the same requirements were installed completely; an
    interrupted install (no stamp) is finished on the next call. Raises :class:`RuntimeError`
    with a one-line reason when the venv or the install fails.
    """
    venv = Path(root) / VENV_NAME
    python = _venv_python(venv)
    stamp = venv / STAMP_NAME
    requirements = peer_requirements()
    wanted = "\n".join(requirements) + "\n"

    def complete() -> bool:
        try:
            return python.exists() and stamp.read_text() == wanted
        except OSError:
            return False

    if complete():
        return python
    venv.mkdir(parents=True, exist_ok=True)
    with _locked(venv / ".lock"):
        if complete():
            return python
        stamp.unlink(missing_ok=True)
        if not python.exists():
            # The interpreter running bench.py (the project's .venv, itself made by
            # ``python3 -m venv``): the peer then runs on the same Python release as we do.
            _setup_step([sys.executable, "-m", "venv", str(venv)], f"python -m venv {venv}")
        _setup_step(
            [
                str(python),
                *("-m", "pip", "install", "--quiet", "--disable-pip-version-check"),
                *requirements,
            ],
            "pip install " + " ".join(requirements),
        )
        _setup_step(
            [str(python), "-c", "import django, django_athm.apps, athm, httpx, pydantic"],
            f"importing django-athm in {venv}",
        )
        stamp.write_text(wanted)
    return python


def _require_loopback(url: str) -> str:
    """``url`` without a trailing slash, if it is http:// to a loopback IP literal."""
    parts = urlsplit(url)
    try:
        loopback = parts.hostname is not None and ipaddress.ip_address(parts.hostname).is_loopback
    except ValueError:
        loopback = False
    if parts.scheme != "http" or not loopback:
        raise RuntimeError(f"the peer only talks to http://127.0.0.1, not {url!r}")
    return url.rstrip("/")


def run_peer(
    python: Path,
    api_base: str,
    public_token: str,
    private_token: str,
    payments: list[dict],
    timeout: float,
) -> dict:
    """Run the peer loop over ``payments`` in the ``python`` of :func:`ensure_peer_python`.

    Each payment is a dict with ``ecommerce_id`` (uuid string) and ``total`` (decimal string),
    optionally ``subtotal`` and ``tax``. Returns the child's JSON report (see :func:`main`).
    Raises :class:`RuntimeError` with the child's last stderr line when it fails or outlives
    ``timeout`` seconds.
    """
    _require_loopback(api_base)
    # No proxy variable reaches the child: httpx would otherwise send 127.0.0.1 traffic to it.
    env = {key: value for key, value in os.environ.items() if key.lower() not in _PROXY_VARIABLES}
    with tempfile.TemporaryDirectory(prefix="athm-peer-") as folder:
        payments_file = Path(folder) / "payments.json"
        payments_file.write_text(json.dumps(list(payments), default=str))
        command = [
            str(python),
            "-I",  # isolated: no PYTHON* variables, no user site, no script folder on sys.path
            str(Path(__file__).resolve()),
            "--api-base",
            api_base,
            "--public-token",
            public_token,
            "--private-token",
            private_token,
            "--payments",
            str(payments_file),
        ]
        try:
            done = subprocess.run(  # noqa: S603
                command,
                capture_output=True,
                text=True,
                timeout=timeout,
                cwd=folder,
                env=env,
                check=False,
            )
        except subprocess.TimeoutExpired as exc:
            stderr = exc.stderr.decode(errors="replace") if isinstance(exc.stderr, bytes) else None
            raise RuntimeError(
                f"peer run timed out after {timeout:g} s: {_last_line(stderr)}"
            ) from None
        except OSError as exc:
            raise RuntimeError(f"peer run could not start: {exc}") from None
    if done.returncode != 0:
        raise RuntimeError(
            f"peer run failed (exit status {done.returncode}): {_last_line(done.stderr)}"
        )
    try:
        report = json.loads(_last_line(done.stdout))
    except ValueError:
        raise RuntimeError(
            f"peer run printed no JSON report: {_last_line(done.stdout, done.stderr)}"
        ) from None
    if not isinstance(report, dict):
        raise RuntimeError("peer run printed JSON that is not an object")
    return report


# -- role 2: the child, run under .venv-peer ------------------------------------------------


class _Guard:
    """Refuses every connection or name lookup that is not for a loopback address."""

    def __init__(self) -> None:
        self.connections = 0
        self.refused: list[str] = []

    @staticmethod
    def _is_loopback(host: Any) -> bool:
        if isinstance(host, bytes):
            host = host.decode("ascii", "replace")
        if host == "localhost":
            return True
        try:
            return ipaddress.ip_address(str(host).split("%")[0]).is_loopback
        except ValueError:
            return False

    def _refuse(self, what: str) -> None:
        self.refused.append(what)
        raise PermissionError(f"peer guard: refused {what} (loopback only)")

    def install(self) -> None:
        guard = self
        connect, connect_ex = socket.socket.connect, socket.socket.connect_ex
        getaddrinfo = socket.getaddrinfo

        def check(sock: socket.socket, address: Any) -> None:
            if sock.family in (socket.AF_INET, socket.AF_INET6):
                if not guard._is_loopback(address[0]):
                    guard._refuse(f"a connection to {address!r}")
                guard.connections += 1
            elif sock.family != getattr(socket, "AF_UNIX", None):
                guard._refuse(f"a connection of family {sock.family!r}")

        def guarded_connect(self: socket.socket, address: Any) -> None:
            check(self, address)
            return connect(self, address)

        def guarded_connect_ex(self: socket.socket, address: Any) -> int:
            check(self, address)
            return connect_ex(self, address)

        def guarded_getaddrinfo(host: Any, *args: Any, **kwargs: Any) -> Any:
            if host is not None and not guard._is_loopback(host):
                guard._refuse(f"a name lookup of {host!r}")
            return getaddrinfo(host, *args, **kwargs)

        socket.socket.connect = guarded_connect  # type: ignore[method-assign]
        socket.socket.connect_ex = guarded_connect_ex  # type: ignore[method-assign]
        socket.getaddrinfo = guarded_getaddrinfo


def _load_payments(path: str) -> list[dict[str, Any]]:
    import uuid
    from decimal import Decimal

    with open(path, encoding="utf-8") as handle:
        raw = json.load(handle)
    if not isinstance(raw, list):
        raise ValueError("the payments file must hold a JSON list")
    payments = []
    for index, item in enumerate(raw):
        if not isinstance(item, dict) or "ecommerce_id" not in item or "total" not in item:
            raise ValueError(f"payment #{index} needs ecommerce_id and total")
        payments.append(
            {
                "ecommerce_id": uuid.UUID(str(item["ecommerce_id"])),
                "total": Decimal(str(item["total"])),
                "subtotal": Decimal(str(item.get("subtotal") or "0.00")),
                "tax": Decimal(str(item.get("tax") or "0.00")),
            }
        )
    return payments


def _count_failed_lookups() -> dict[str, Any]:
    """Counts the warnings ``sync_status`` logs instead of raising (payment_service.py:280)."""
    import logging

    seen: dict[str, Any] = {"count": 0, "first": None}

    class FailedLookups(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if str(record.msg).startswith(_FAILED_LOOKUP):
                seen["count"] += 1
                if seen["first"] is None:
                    seen["first"] = record.getMessage()

    logger = logging.getLogger("django_athm.services.payment_service")
    logger.addHandler(FailedLookups(logging.WARNING))
    logger.propagate = False  # counted here instead of one stderr line per payment
    return seen


def _configure_django(db_path: Path, public_token: str, private_token: str) -> None:
    import django
    from django.conf import settings

    settings.configure(
        DEBUG=False,
        SECRET_KEY="peer-benchmark-throwaway",  # noqa: S106 - a throwaway in-process project
        DATABASES={"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": str(db_path)}},
        INSTALLED_APPS=["django_athm"],  # its models need no other app (0001_initial: no deps)
        USE_TZ=True,
        TIME_ZONE="UTC",
        DEFAULT_AUTO_FIELD="django.db.models.BigAutoField",
        # The only settings django-athm reads (django_athm/conf.py: DJANGO_ATHM_ + name).
        DJANGO_ATHM_PUBLIC_TOKEN=public_token,
        DJANGO_ATHM_PRIVATE_TOKEN=private_token,
    )
    django.setup()


def _measure(args: argparse.Namespace, base_url: str, guard: _Guard) -> dict[str, Any]:
    import io
    from importlib import metadata

    payments = _load_payments(args.payments)
    folder = Path(tempfile.mkdtemp(prefix="athm-peer-db-"))
    try:
        _configure_django(folder / "peer.sqlite3", args.public_token, args.private_token)
        from django.core.management import call_command

        call_command("migrate", verbosity=0, interactive=False, stdout=io.StringIO())

        from django_athm.models import Payment
        from django_athm.services.payment_service import PaymentService

        # The patch took: the client sync_status builds (get_client) points at the sandbox.
        client = PaymentService.get_client()
        if client.base_url != base_url or not client.base_url.startswith("http://127.0.0.1"):
            raise RuntimeError(f"PaymentService.get_client() points at {client.base_url!r}")
        client.close()

        # As PaymentService.initiate creates its row (payment_service.py:111-119).
        Payment.objects.bulk_create(
            Payment(
                ecommerce_id=p["ecommerce_id"],
                status=Payment.Status.OPEN,
                total=p["total"],
                subtotal=p["subtotal"],
                tax=p["tax"],
                metadata_1="",
                metadata_2="",
            )
            for p in payments
        )
        by_id = {row.ecommerce_id: row for row in Payment.objects.all()}
        rows = [by_id[p["ecommerce_id"]] for p in payments]
        before = {row.ecommerce_id: row.status for row in rows}
        failed = _count_failed_lookups()
        connections_before = guard.connections

        errors, first_error = 0, None
        start = time.perf_counter()
        for row in rows:
            try:
                PaymentService.sync_status(row)
            except Exception as exc:
                errors += 1
                if first_error is None:
                    first_error = f"{type(exc).__name__}: {exc}"
        seconds = time.perf_counter() - start

        if guard.refused:
            raise RuntimeError(f"peer guard refused {len(guard.refused)}: {guard.refused[0]}")
        after = dict(Payment.objects.values_list("ecommerce_id", "status"))
        return {
            "seconds": seconds,
            "payments": len(rows),
            "changed": sum(1 for key, status in before.items() if after.get(key) != status),
            "statuses": dict(sorted(Counter(after.values()).items())),
            "errors": errors,
            "first_error": first_error,
            # sync_status catches its own API errors (payment_service.py:277-281): counted from
            # the warning it logs, as they never reach the loop above.
            "swallowed_errors": failed["count"],
            "first_swallowed_error": failed["first"],
            "connections": guard.connections - connections_before,
            "function": PEER_FUNCTION,
            "loop": "own loop over the rows (the package ships none for pending payments)",
            "does": DOES,
            "does_not": DOES_NOT,
            "base_url": base_url,
            "versions": {
                name: metadata.version(name) for name in ("django-athm", "athm", "Django", "httpx")
            }
            | {"python": sys.version.split()[0]},
        }
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="scripts/_peer.py",
        description=f"Time {PEER_FUNCTION} (django-athm 1.0.2) over given OPEN payments.",
    )
    parser.add_argument("--api-base", required=True, help="the sandbox, http://127.0.0.1:PORT")
    parser.add_argument("--public-token", required=True)
    parser.add_argument("--private-token", required=True)
    parser.add_argument("--payments", required=True, help="JSON list of payment dicts")
    return parser


def _point_client_at(base_url: str) -> None:
    """THE patch (see the module docstring): ``ATHMovilClient(base_url=...)``'s default."""
    import inspect

    from athm.client import ATHMovilClient

    init = ATHMovilClient.__init__
    # __defaults__ holds the defaults of the trailing positional parameters, in order.
    defaulted = [
        parameter.name
        for parameter in inspect.signature(init).parameters.values()
        if parameter.default is not parameter.empty
        and parameter.kind is parameter.POSITIONAL_OR_KEYWORD
    ]
    defaults = list(init.__defaults__ or ())
    index = defaulted.index("base_url")
    if defaults[index] != PRODUCTION_BASE_URL:
        raise RuntimeError(f"unexpected ATHMovilClient base_url default {defaults[index]!r}")
    defaults[index] = base_url
    init.__defaults__ = tuple(defaults)


def main(argv: list[str] | None = None) -> int:
    """The child: print one JSON report on stdout; exit 1 with one stderr line on failure."""
    args = _parser().parse_args(argv)
    try:
        base_url = _require_loopback(args.api_base)
        for key in list(os.environ):
            if key.lower() in _PROXY_VARIABLES:
                del os.environ[key]
        guard = _Guard()
        guard.install()
        _point_client_at(base_url)
        report = _measure(args, base_url, guard)
    except Exception as exc:
        traceback.print_exc()
        print(f"peer: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(report), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
