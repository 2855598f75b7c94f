"""Where the client spends CPU per call beyond bare ``requests``: ``scripts/profile_client.py``.

Makes ``--calls`` findPayment calls to the sandbox on loopback (no latency; the sandbox runs in
a child process, so its CPU is not counted) through :class:`~athm_sync.client.ATHMovilClient`
and through a bare ``requests.Session`` posting the same body, in alternating rounds, and
prints the CPU seconds per call of each (``time.process_time``: every thread of this process,
the client's deadline watchdog included; the best round) and a cProfile top list of our own
functions (``--top``; ``--top 0`` skips the profile). Run it with the project's venv:
``.venv/bin/python scripts/profile_client.py``.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import multiprocessing
import pstats
import sys
import time
from collections.abc import Callable, Sequence
from itertools import cycle, islice
from multiprocessing.connection import Connection

import requests

PUBLIC_TOKEN = "sandbox-public-token"  # noqa: S105 - the sandbox's token, not a secret
PAYMENTS = 200
ROUNDS = 3


def _serve(conn: Connection) -> None:
    from athm_sync.sandbox import SandboxServer

    server = SandboxServer(public_token=PUBLIC_TOKEN)
    server.start()
    try:
        ids = [server.create_payment("1.00")[0] for _ in range(PAYMENTS)]
        conn.send((server.url, ids))
        conn.recv()  # until the parent is done
    finally:
        server.stop()


def _bare(session: requests.Session, url: str) -> Callable[[str], object]:
    endpoint = f"{url}/api/business-transaction/ecommerce/business/findPayment"
    headers = {"Content-Type": "application/json", "Accept": "application/json"}

    def find(ecommerce_id: str) -> object:
        body = json.dumps({"ecommerceId": ecommerce_id, "publicToken": PUBLIC_TOKEN})
        return session.post(endpoint, data=body, headers=headers).json()["data"]

    return find


def _cpu_per_call(find: Callable[[str], object], ids: Sequence[str]) -> float:
    started = time.process_time()
    for ecommerce_id in ids:
        find(ecommerce_id)
    return (time.process_time() - started) / len(ids)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="scripts/profile_client.py")
    parser.add_argument("--calls", type=int, default=2000, help="calls per round (2000)")
    parser.add_argument("--top", type=int, default=15, help="profile lines (15; 0: none)")
    options = parser.parse_args(argv)
    if options.calls < 1 or options.top < 0:
        parser.error("--calls must be at least 1 and --top at least 0")

    from athm_sync.client import ATHMovilClient

    parent, child = multiprocessing.Pipe()
    sandbox = multiprocessing.get_context("spawn").Process(target=_serve, args=(child,))
    sandbox.start()
    try:
        url, known = parent.recv()
        ids = list(islice(cycle(known), options.calls))
        client = ATHMovilClient(PUBLIC_TOKEN, api_base_url=url, report_base_url=url)
        session = requests.Session()
        bare = _bare(session, url)
        ours = client.find_payment
        for find in (bare, ours):  # warm both: connections, imports, caches
            _cpu_per_call(find, ids[:100])
        best = {"requests": float("inf"), "ATHMovilClient": float("inf")}
        for _ in range(ROUNDS):
            best["requests"] = min(best["requests"], _cpu_per_call(bare, ids))
            best["ATHMovilClient"] = min(best["ATHMovilClient"], _cpu_per_call(ours, ids))
        print(f"findPayment, {options.calls} calls a round, best of {ROUNDS}: CPU per call")
        for name, seconds in best.items():
            print(f"  {name:<15} {seconds * 1e6:8.0f} µs")
        extra = best["ATHMovilClient"] - best["requests"]
        print(f"  {'beyond requests':<15} {extra * 1e6:8.0f} µs ({extra / best['requests']:+.0%})")
        if options.top:
            profiler = cProfile.Profile()
            profiler.enable()
            _cpu_per_call(ours, ids)
            profiler.disable()
            out = io.StringIO()
            stats = pstats.Stats(profiler, stream=out).sort_stats("tottime")
            stats.print_stats("athm_sync", options.top)
            body = out.getvalue()
            print(body[body.index("   ncalls") :].rstrip() if "   ncalls" in body else body)
        client.close()
        session.close()
    finally:
        parent.send("stop")
        sandbox.join(10)
        if sandbox.is_alive():
            sandbox.terminate()
    return 0


if __name__ == "__main__":
    sys.exit(main())
