"""The benchmarks behind scripts/bench: ``scripts/bench [<benchmark>] [options]``.

With no benchmark named, every case of the poller at scale (``baseline``, ``poll``,
``scale-out``, ``peer``, ``memory`` with the plan, ``webhook``) runs and one table is printed
(:func:`bench_scale`; the measured processes are ``_scale.py``'s, the peer ``_peer.py``'s).

``webhook``: the latency of the webhook view (``athm_sync:webhook``) over
real HTTP. It writes the throwaway Django project of ``_shop.py`` into a temporary folder (SQLite
file database, the app's URLs under ``athm/``), starts the sandbox ATH Móvil server in this
process, serves Django on 127.0.0.1 from a thread (``_shop.DjangoServer``), and POSTs
real-shaped completion webhooks with one ``requests.Session``, timing each POST (request sent,
answer read). Three scenarios, each with the sandbox answering at once and with 50 ms added to
every API call:

- ``genuine``: a tracked payment the sandbox completed; the view verifies it with one
  findPayment and applies it (database writes and one ``payment_completed`` signal);
- ``duplicate``: the same body delivered again; the stored event answers, no API call;
- ``forged``: a completion the sandbox contradicts (the payment is still OPEN): rejected.

Every answer is checked (HTTP 200, the expected ``outcome`` and ``duplicate``, exactly one
signal per genuine webhook and none otherwise); any mismatch ends the run with exit status 1.
The scenarios are interleaved (one request of each in turn), so a machine that gets busier
during the run slows them alike; the sandbox's call counts are taken around each request.

``checkout``: the checkout's waiting page (:func:`bench_checkout`): from the customer's
approval to the status endpoint answering success, and the ATH Móvil calls per waiting
customer per minute with 1, 4 and 16 tabs, the sandbox at 40 ms; the tabs are HTTP clients
polling as the page's script does. Then the same latency as a customer sees it: headless
Chromium on the waiting page, its own script polling, from the approval to the browser at the
shop's success URL (skipped, and said so, where Chromium or selenium is missing).

A benchmark is a function taking its own arguments and returning an exit status; add one to
:data:`BENCHMARKS` to make it a subcommand.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import threading
import time
from collections.abc import Callable, Sequence
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import _peer
import _scale
import _shop

PROGRAM = "scripts/bench"
LATENCIES_MS = (0, 50)


class UsageError(Exception):
    """Bad arguments: one line on stderr and exit status 2."""


class BenchFailure(Exception):
    """The code under test answered something it should not have: exit status 1."""


class _Parser(argparse.ArgumentParser):
    # argparse prints its usage block and exits by itself; we want one line and status 2.
    def error(self, message: str) -> None:  # type: ignore[override]
        raise UsageError(message)


def progress(text: str) -> None:
    """A progress line on stderr, so stdout holds only the report."""
    print(text, file=sys.stderr, flush=True)


# -- statistics ------------------------------------------------------------------------------


def percentile(ordered: Sequence[float], fraction: float) -> float:
    """The ``fraction`` quantile of sorted values, interpolating between the closest ranks."""
    if not ordered:
        raise ValueError("no values")
    position = (len(ordered) - 1) * fraction
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def summarize(samples_ms: Sequence[float]) -> dict[str, float]:
    """n, mean, min, p50, p95 and max of some latencies, in milliseconds."""
    ordered = sorted(samples_ms)
    return {
        "n": len(ordered),
        "mean": sum(ordered) / len(ordered),
        "min": ordered[0],
        "p50": percentile(ordered, 0.50),
        "p95": percentile(ordered, 0.95),
        "max": ordered[-1],
    }


# -- the webhook benchmark -------------------------------------------------------------------


@dataclass
class Scenario:
    """One kind of webhook delivery and what the view must answer to it."""

    name: str
    title: str
    outcome: str
    duplicate: bool
    signals: int  # payment_completed signals per request
    find_payments: int  # findPayment calls per request the view should make


SCENARIOS = (
    Scenario("genuine", "genuine completion", "applied", False, 1, 1),
    Scenario("duplicate", "duplicate delivery", "applied", True, 0, 0),
    Scenario("forged", "forged completion", "rejected", False, 0, 1),
)


@dataclass
class Result:
    """The measured requests of one scenario at one sandbox latency."""

    scenario: Scenario
    latency_ms: int
    samples_ms: list[float]
    sandbox_calls: dict[str, int]
    sandbox_connections: int
    signals: int

    def as_json(self) -> dict[str, Any]:
        """This result as the ``--json`` document lists it."""
        stats = summarize(self.samples_ms)
        return {
            "scenario": self.scenario.name,
            "title": self.scenario.title,
            "sandbox_latency_ms": self.latency_ms,
            "expected": {
                "outcome": self.scenario.outcome,
                "duplicate": self.scenario.duplicate,
                "signals_per_request": self.scenario.signals,
                "find_payment_per_request": self.scenario.find_payments,
            },
            "n": stats.pop("n"),
            "latency_ms": {key: round(value, 3) for key, value in stats.items()},
            "signals": self.signals,
            "sandbox_calls": {name: n for name, n in sorted(self.sandbox_calls.items()) if n},
            "sandbox_connections": self.sandbox_connections,
            "samples_ms": [round(value, 3) for value in self.samples_ms],
        }


@dataclass
class SignalCounter:
    """A ``payment_completed`` receiver that counts what it gets (from the server's threads)."""

    count: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def __call__(self, sender: Any, **kwargs: Any) -> None:
        """Count one signal."""
        with self._lock:
            self.count += 1

    def value(self) -> int:
        """Signals received so far."""
        with self._lock:
            return self.count


class WebhookBench:
    """Drives the three scenarios against a running sandbox and Django server."""

    def __init__(self, sandbox: Any, webhook_url: str, warmup: int) -> None:
        """Post to ``webhook_url`` with one keep-alive session; count payment_completed."""
        import requests

        from athm_sync.signals import payment_completed

        self.sandbox = sandbox
        self.url = webhook_url
        self.warmup = warmup
        self.session = requests.Session()
        # No proxy from the environment (this traffic stays on loopback), no .netrc look-ups.
        self.session.trust_env = False
        self.signals = SignalCounter()
        payment_completed.connect(self.signals, weak=False, dispatch_uid="bench-webhook")
        self.delivered: list[bytes] = []  # genuine bodies, replayed as duplicates
        self.genuine_ids: list[str] = []
        self.forged_ids: list[str] = []

    def close(self) -> None:
        """Close the client's connections."""
        self.session.close()

    # Each prepare_* makes the body of one request; none of it is timed.

    def _new_tracked_payment(self) -> str:
        from athm_sync.models import Payment

        ecommerce_id, _ = self.sandbox.create_payment("10.00")
        Payment.objects.track(ecommerce_id, total="10.00")
        return ecommerce_id

    def prepare_genuine(self) -> bytes:
        """A tracked payment the customer completed, and its completion webhook."""
        ecommerce_id = self._new_tracked_payment()
        self.sandbox.complete(ecommerce_id)
        body = json.dumps(self.sandbox.webhook_payload(ecommerce_id)).encode()
        self.delivered.append(body)
        self.genuine_ids.append(ecommerce_id)
        return body

    def prepare_duplicate(self) -> bytes:
        """The oldest genuine body not replayed yet."""
        if not self.delivered:
            raise BenchFailure("no genuine webhook left to deliver again")
        return self.delivered.pop(0)

    def prepare_forged(self) -> bytes:
        """A tracked payment still OPEN at the sandbox, and a completion webhook for it."""
        ecommerce_id = self._new_tracked_payment()
        self.forged_ids.append(ecommerce_id)
        return json.dumps(self.sandbox.webhook_payload(ecommerce_id, "completed")).encode()

    def post(self, body: bytes) -> tuple[float, Any]:
        """POST one webhook; returns (seconds from sending to the whole answer read, response)."""
        started = time.perf_counter()
        response = self.session.post(
            self.url, data=body, headers={"Content-Type": "application/json"}, timeout=30
        )
        elapsed = time.perf_counter() - started
        return elapsed, response

    def check(self, scenario: Scenario, label: str, response: Any, signals: int) -> None:
        """Raise :class:`BenchFailure` unless the answer and the signals are as expected."""
        try:
            answer = response.json()
        except ValueError:
            answer = None
        problem = ""
        if response.status_code != 200:
            problem = f"HTTP {response.status_code}"
        elif not isinstance(answer, dict):
            problem = "the body is not a JSON object"
        elif answer.get("outcome") != scenario.outcome:
            problem = f"outcome {answer.get('outcome')!r}, expected {scenario.outcome!r}"
        elif answer.get("duplicate") is not scenario.duplicate:
            problem = f"duplicate {answer.get('duplicate')!r}, expected {scenario.duplicate}"
        elif signals != scenario.signals:
            problem = f"{signals} payment_completed signals, expected {scenario.signals}"
        if problem:
            raise BenchFailure(f"{label}: {problem}; the answer was: {response.text[:500]}")

    def run(self, latency_ms: int, n: int) -> list[Result]:
        """Time ``n`` rounds of every scenario with the sandbox at ``latency_ms``.

        A round is one request of each scenario in turn (a genuine webhook, that body again,
        a forged one), so a machine that gets busier half-way slows every scenario alike.
        The first ``warmup`` rounds are checked but not counted.
        """
        self.sandbox.set_latency(latency_ms / 1000)
        self.sandbox.reset_counts()
        samples: dict[str, list[float]] = {s.name: [] for s in SCENARIOS}
        calls: dict[str, dict[str, int]] = {s.name: {} for s in SCENARIOS}
        connections = dict.fromkeys(samples, 0)
        signals = dict.fromkeys(samples, 0)
        for index in range(self.warmup + n):
            measured = index >= self.warmup
            for scenario in SCENARIOS:
                body = getattr(self, f"prepare_{scenario.name}")()
                calls_before = self.sandbox.counts()
                connections_before = self.sandbox.connections()
                signals_before = self.signals.value()
                elapsed, response = self.post(body)
                fired = self.signals.value() - signals_before
                label = f"{scenario.name} at {latency_ms} ms, round {index + 1}"
                self.check(scenario, label + ("" if measured else " (warm-up)"), response, fired)
                if not measured:
                    continue
                samples[scenario.name].append(elapsed * 1000)
                signals[scenario.name] += fired
                connections[scenario.name] += self.sandbox.connections() - connections_before
                for endpoint, count in self.sandbox.counts().items():
                    seen = count - calls_before.get(endpoint, 0)
                    if seen:
                        tally = calls[scenario.name]
                        tally[endpoint] = tally.get(endpoint, 0) + seen
        return [
            Result(
                scenario=scenario,
                latency_ms=latency_ms,
                samples_ms=samples[scenario.name],
                sandbox_calls=calls[scenario.name],
                sandbox_connections=connections[scenario.name],
                signals=signals[scenario.name],
            )
            for scenario in SCENARIOS
        ]

    def check_database(self) -> None:
        """Every genuine payment ended COMPLETED and every forged one is still OPEN."""
        from athm_sync.models import Payment

        completed = Payment.objects.filter(
            pk__in=self.genuine_ids, status=Payment.Status.COMPLETED
        ).count()
        still_open = Payment.objects.filter(
            pk__in=self.forged_ids, status=Payment.Status.OPEN
        ).count()
        if completed != len(self.genuine_ids):
            raise BenchFailure(
                f"{completed} of {len(self.genuine_ids)} genuinely paid payments are COMPLETED"
            )
        if still_open != len(self.forged_ids):
            raise BenchFailure(
                f"{still_open} of {len(self.forged_ids)} payments with forged webhooks are OPEN"
            )


def webhook_parser() -> _Parser:
    """The options of ``scripts/bench webhook``."""
    parser = _Parser(
        prog=f"{PROGRAM} webhook",
        description="Latency of the webhook view over HTTP, the sandbox at 0 and 50 ms.",
    )
    parser.add_argument(
        "--n",
        type=int,
        default=200,
        metavar="N",
        help="measured requests per scenario with the sandbox at 0 ms (default 200); "
        "half as many (at least 1) at 50 ms",
    )
    parser.add_argument(
        "--warmup",
        type=int,
        default=5,
        metavar="W",
        help="requests per scenario sent first and not counted (default 5)",
    )
    parser.add_argument(
        "--dir",
        type=Path,
        default=None,
        metavar="DIR",
        help="where the throwaway project and its SQLite file go (default: the system's temp "
        "folder); /dev/shm takes the disk's fsyncs out of the figures",
    )
    parser.add_argument(
        "--json", action="store_true", help="print one JSON document instead of the table"
    )
    return parser


def bench_webhook(argv: Sequence[str]) -> int:
    """``scripts/bench webhook``: run it, print the table or the JSON document, return 0."""
    args = webhook_parser().parse_args(argv)
    if args.n < 1:
        raise UsageError(f"--n must be at least 1, not {args.n}")
    if args.warmup < 0:
        raise UsageError(f"--warmup cannot be negative, not {args.warmup}")
    if args.dir is not None and not args.dir.is_dir():
        raise UsageError(f"--dir {args.dir} is not a folder")
    counts = {0: args.n, 50: max(1, args.n // 2)}
    started = time.perf_counter()

    with (
        _shop.throwaway_shop("athm-bench-", args.dir) as (sandbox, folder),
        _shop.DjangoServer() as server,
    ):
        path = _shop.webhook_path()
        with closing(WebhookBench(sandbox, server.url + path, args.warmup)) as bench:
            progress(
                f"Sandbox ATH Móvil at {sandbox.url}; Django at {server.url}; project {folder}"
            )
            results: list[Result] = []
            for latency_ms in LATENCIES_MS:
                n = counts[latency_ms]
                progress(
                    f"  sandbox +{latency_ms} ms: {args.warmup} warm-up and {n} measured rounds "
                    f"of {len(SCENARIOS)} requests ..."
                )
                results.extend(bench.run(latency_ms, n))
            bench.check_database()
        requests_sent = sum(len(r.samples_ms) for r in results) + args.warmup * len(results)
        document = {
            "benchmark": "webhook",
            "endpoint": f"POST {path.replace(_shop.WEBHOOK_SECRET, '<token>')}",
            "server": {
                "description": _shop.SERVER_DESCRIPTION,
                "requests": requests_sent,
                "tcp_connections": server.connections,
                "keep_alive": server.connections < requests_sent,
            },
            "client": "requests.Session (one connection pool, keep-alive)",
            "process": "the sandbox, the Django server and the client share one Python process",
            "database": f"SQLite file in {folder}, transaction_mode IMMEDIATE, CONN_MAX_AGE 0",
            "warmup_per_scenario": args.warmup,
            "environment": environment(),
            "results": [result.as_json() for result in results],
            "elapsed_seconds": round(time.perf_counter() - started, 2),
        }
    if args.json:
        print(json.dumps(document, indent=2))
    else:
        print_table(document)
    return 0


def environment() -> dict[str, Any]:
    """Versions and the machine, so figures from two runs can be compared fairly."""
    import sqlite3

    import django
    import requests

    return {
        "python": platform.python_version(),
        "django": django.get_version(),
        "requests": requests.__version__,
        "sqlite": sqlite3.sqlite_version,
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
    }


def print_table(document: dict[str, Any]) -> None:
    """The readable report of :func:`bench_webhook`."""
    env = document["environment"]
    server = document["server"]
    print(f"Webhook view latency: {document['endpoint']} over HTTP on {_shop.HOST}")
    print(f"  server:   {server['description']}")
    print(
        f"  keep-alive: {'yes' if server['keep_alive'] else 'NO'} "
        f"({server['requests']} requests over {server['tcp_connections']} TCP connection(s))"
    )
    print(f"  client:   {document['client']}")
    print(f"  database: {document['database']}")
    print(f"  process:  {document['process']} (and its GIL)")
    print(
        f"  Python {env['python']}, Django {env['django']}, SQLite {env['sqlite']}, "
        f"{env['cpus']} CPUs, {env['platform']}"
    )
    print(
        "  scenarios interleaved (one request of each in turn); "
        f"{document['warmup_per_scenario']} warm-up requests per scenario not counted"
    )
    print("  times in ms, from sending the POST to reading the whole answer")
    print()
    header = (
        f"{'scenario':<20} {'outcome':<21} {'ATHM +':>6} {'n':>4} "
        f"{'mean':>7} {'min':>7} {'p50':>7} {'p95':>7} {'max':>7}  "
        f"{'findPayment':>11} {'signals':>7} {'ATHM conns':>10}"
    )
    print(header)
    print("-" * len(header))
    previous_latency = None
    for result in document["results"]:
        if previous_latency is not None and result["sandbox_latency_ms"] != previous_latency:
            print()
        previous_latency = result["sandbox_latency_ms"]
        expected = result["expected"]
        outcome = expected["outcome"] + (" (duplicate)" if expected["duplicate"] else "")
        stats = result["latency_ms"]
        find_payment = result["sandbox_calls"].get("findPayment", 0)
        others = sum(v for k, v in result["sandbox_calls"].items() if k != "findPayment")
        flag = "" if find_payment == expected["find_payment_per_request"] * result["n"] else " !"
        print(
            f"{result['title']:<20} {outcome:<21} {result['sandbox_latency_ms']:>3} ms "
            f"{result['n']:>4} {stats['mean']:>7.2f} {stats['min']:>7.2f} {stats['p50']:>7.2f} "
            f"{stats['p95']:>7.2f} {stats['max']:>7.2f}  {find_payment:>11}{flag} "
            f"{result['signals']:>7} {result['sandbox_connections']:>10}"
            + (f"  (+{others} other API calls)" if others else "")
        )
    print()
    print(
        "findPayment: calls the sandbox saw during the measured requests (expected: one per "
        "genuine or forged webhook, none per duplicate; '!' marks a difference)."
    )
    print(
        "signals: payment_completed signals received (checked per request: one per genuine "
        "webhook, none otherwise)."
    )
    print(
        "ATHM conns: new TCP connections the sandbox accepted during the measured requests "
        "(0: the view's ATH Móvil client kept its connection alive)."
    )
    print(f"Every answer was HTTP 200 with the expected outcome. {document['elapsed_seconds']} s.")


# -- the command line ------------------------------------------------------------------------


def _proc_figures(pid: int) -> dict[str, int]:
    """A live process's resident memory (KiB), open file descriptors and TCP sockets."""
    status = Path(f"/proc/{pid}/status").read_text()
    rss = next(int(line.split()[1]) for line in status.splitlines() if line.startswith("VmRSS:"))
    fds = list(Path(f"/proc/{pid}/fd").iterdir())
    sockets = sum(1 for fd in fds if os.readlink(fd).startswith("socket:"))
    return {"rss_kib": rss, "open_files": len(fds), "sockets": sockets}


def bench_watch(argv: Sequence[str]) -> int:
    """A real ``athm_sync --watch --interval 0`` process over N passes: memory, open files and
    sockets after the first passes and after the last, from /proc (Linux)."""
    parser = _Parser(prog=f"{PROGRAM} watch", description=bench_watch.__doc__)
    parser.add_argument("--passes", type=int, default=1000, help="passes to run (default 1000)")
    parser.add_argument("--json", action="store_true", help="print one JSON document")
    args = parser.parse_args(argv)
    if args.passes < 20:
        raise UsageError("--passes must be at least 20")
    import subprocess

    with _shop.throwaway_shop("athm-bench-watch-") as (sandbox, folder):
        from athm_sync.models import Payment

        for _ in range(5):  # open payments: every pass asks ATH Móvil about them
            ecommerce_id, _ = sandbox.create_payment("5.00")
            Payment.objects.track(ecommerce_id, total="5.00")
        Payment.objects.update(next_check_at=Payment.objects.first().created_at)
        env = {**os.environ, "DJANGO_SETTINGS_MODULE": f"{_shop.PACKAGE}.settings"}
        progress(f"running {args.passes} passes of athm_sync --watch --interval 0 ...")
        child = subprocess.Popen(  # noqa: S603 - our own interpreter and the project's manage.py
            [
                sys.executable,
                "manage.py",
                "athm_sync",
                "--watch",
                "--interval",
                "0",
                "--json",
                "--iterations",
                str(args.passes),
            ],
            cwd=folder,
            env=env,
            stdout=subprocess.PIPE,
            text=True,
        )
        samples: dict[int, dict[str, int]] = {}
        assert child.stdout is not None
        for number, line in enumerate(child.stdout, start=1):
            json.loads(line)
            if number in (10, args.passes - 1):
                samples[number] = _proc_figures(child.pid)
        code = child.wait(timeout=60)
        if code != 0:
            raise BenchFailure(f"athm_sync --watch exited {code}")
        connections = sandbox.connections()
    first, last = samples[10], samples[args.passes - 1]
    document = {
        "benchmark": "watch",
        "passes": args.passes,
        "after_10_passes": first,
        f"after_{args.passes - 1}_passes": last,
        "sandbox_tcp_connections_accepted": connections,
        "environment": environment(),
    }
    if args.json:
        print(json.dumps(document, indent=2))
    else:
        print(f"athm_sync --watch over {args.passes} passes (5 open payments, sandbox at 0 ms)")
        print(f"{'':<24}{'after 10':>12}{f'after {args.passes - 1}':>14}")
        for key, label in (
            ("rss_kib", "RSS (KiB)"),
            ("open_files", "open files"),
            ("sockets", "sockets"),
        ):
            print(f"{label:<24}{first[key]:>12}{last[key]:>14}")
        print(f"TCP connections the sandbox accepted in all: {connections}")
    return 0


# -- the poller at scale: poll, scale-out, peer, memory, plan ---------------------------------

ROOT = Path(__file__).resolve().parent.parent
DATABASE_NAMES = {"sqlite": "SQLite", "sqlite-wal": "SQLite WAL", "postgresql": "PostgreSQL"}
BENCH_DATABASE = "athm_sync_bench"


def postgres_reachable() -> bool:
    """Whether PostgreSQL answers on 127.0.0.1:5432 (the bench's PostgreSQL cases need it)."""
    import socket

    try:
        with socket.create_connection((_scale.HOST, 5432), timeout=2):
            return True
    except OSError:
        return False


@dataclass
class ScaleBench:
    """What the scale cases share: the sandbox process, the databases, the sizes."""

    folder: Path
    payments: int
    latency_ms: float
    changing: float
    sandbox: _scale.Sandbox = field(init=False)
    rows: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.sandbox = _scale.Sandbox()
        self.postgres = postgres_reachable()
        if not self.postgres:
            self.notes.append("PostgreSQL cases skipped: nothing answers on 127.0.0.1:5432")

    def databases(self) -> list[str]:
        sqlite = f"sqlite:{self.folder / 'bench.sqlite3'}"
        return [sqlite, f"postgresql:{BENCH_DATABASE}"] if self.postgres else [sqlite]

    def prepare(self, database: str, count: int, terminal: int = 0) -> list[dict[str, str]]:
        """A fresh sandbox with ``count`` payments (``changing`` of them paid) and the same
        payments stored, due, in ``database`` (plus ``terminal`` finished ones)."""
        progress(f"  preparing {count} payments ({terminal} more finished) on {database} ...")
        payments, given = self.refill(count, latency=False)
        _scale.run_child(
            "setup",
            database,
            self.sandbox.url,
            "--payments",
            str(given),
            "--terminal",
            str(terminal),
        )
        self.sandbox.set_latency(self.latency_ms)
        self.sandbox.reset_counts()
        return payments

    def refill(self, count: int, latency: bool = True) -> tuple[list[dict[str, str]], Path]:
        """A fresh sandbox with ``count`` payments (``changing`` of them paid), written to a
        file for the measured process; with ``latency``, the sandbox then answers late and its
        counts start from zero."""
        payments = self.sandbox.fill(count, self.changing)
        given = self.folder / "payments.json"
        given.write_text(json.dumps(payments))
        if latency:
            self.sandbox.set_latency(self.latency_ms)
            self.sandbox.reset_counts()
        return payments, given

    def measure(self, database: str, workers: int, processes: int = 1) -> dict[str, Any]:
        """``processes`` runs of ``--workers workers`` started together; their results, the
        wall time from the first start to the last end, and the sandbox's call counts."""
        children = [
            _scale.start_child(database, self.sandbox.url, workers) for _ in range(processes)
        ]
        sandbox_cpu = self.sandbox.cpu_seconds()
        results = _scale.go(children)
        sandbox_cpu = self.sandbox.cpu_seconds() - sandbox_cpu
        wall = max(r["ended"] for r in results) - min(r["started"] for r in results)
        return {
            "runs": results,
            "wall": wall,
            "calls": self.sandbox.counts(),
            "sandbox_cpu": sandbox_cpu,
        }

    def floor(self, count: int, workers: int) -> float:
        return count * self.latency_ms / 1000 / workers

    def row(
        self,
        case: str,
        database: str,
        workers: str,
        *,
        wall: float,
        payments: int,
        concurrency: int,
        calls: dict[str, int],
        **fields: Any,
    ) -> None:
        """Add one row of the table: its wall time next to the floor for ``payments`` checked
        ``concurrency`` at a time, the sandbox's calls, and ``fields``; figures a case does not
        measure are ``None``."""
        floor = self.floor(payments, concurrency)
        self.rows.append(
            {
                "case": case,
                "database": database,
                "workers": workers,
                "wall_seconds": round(wall, 3),
                "floor_seconds": round(floor, 3),
                "times_floor": round(wall / floor, 2),
                "find_payment": calls.get("findPayment", 0),
                "other_api_calls": sum(n for name, n in calls.items() if name != "findPayment"),
                "queries": None,
                "peak_rss_mib": None,
                **fields,
            }
        )

    def add(
        self,
        case: str,
        database: str,
        workers: str,
        measured: dict[str, Any],
        *,
        payments: int,
        concurrency: int,
        **extra: Any,
    ) -> None:
        """A row for runs of the measured process (:meth:`measure`)."""
        runs = measured["runs"]
        reports = [run["report"] for run in runs]
        self.row(
            case,
            DATABASE_NAMES[database.partition(":")[0]],
            workers,
            wall=measured["wall"],
            payments=payments,
            concurrency=concurrency,
            calls=measured["calls"],
            queries=sum(run["queries"] for run in runs),
            checked=sum(report["checked"] for report in reports),
            changed=sum(sum(report["transitions"].values()) for report in reports),
            signals=sum(report["signals_sent"] for report in reports),
            errors=sum(report["error_count"] for report in reports),
            peak_rss_mib=round(max(run["peak_rss_kib"] for run in runs) / 1024, 1),
            cpu_seconds=round(sum(run["cpu_seconds"] for run in runs), 2),
            sandbox_cpu_seconds=round(measured["sandbox_cpu"], 2),
            **extra,
        )

    def close(self) -> None:
        self.sandbox.stop()


def case_baseline(bench: ScaleBench) -> None:
    """Bare requests, 16 threads, the same calls: how near the floor this machine gets now."""
    n = bench.payments
    _, given = bench.refill(n)
    progress(f"  baseline: {n} findPayment calls from a bare requests.Session, 16 threads ...")
    sandbox_cpu = bench.sandbox.cpu_seconds()
    result = json.loads(
        _scale.run_child(
            "baseline", "none:", bench.sandbox.url, "--payments", str(given), "--workers", "16"
        )
    )
    bench.row(
        "baseline: bare requests",
        "-",
        "16",
        wall=result["seconds"],
        payments=n,
        concurrency=16,
        calls=bench.sandbox.counts(),
        checked=result["calls"],
        changed=0,
        signals=0,
        errors=0,
        sandbox_cpu_seconds=round(bench.sandbox.cpu_seconds() - sandbox_cpu, 2),
    )


def case_poll(bench: ScaleBench) -> None:
    """2,000 due payments, 30 % changing, --workers 1 and 16, each database; and SQLite in
    WAL mode with --workers 16, for comparison."""
    n = bench.payments
    wal = f"sqlite-wal:{bench.folder / 'bench-wal.sqlite3'}"
    for database, counts in [*((db, (1, 16)) for db in bench.databases()), (wal, (16,))]:
        for workers in counts:
            bench.prepare(database, n)
            progress(f"  poll: {n} payments, --workers {workers}, {database} ...")
            measured = bench.measure(database, workers)
            bench.add("poll", database, str(workers), measured, payments=n, concurrency=workers)


def case_scale_out(bench: ScaleBench) -> None:
    """Two --workers 16 processes over the same payments, next to one (PostgreSQL)."""
    if not bench.postgres:
        return
    database = bench.databases()[1]
    n = bench.payments
    for processes in (1, 2):
        bench.prepare(database, n)
        progress(f"  scale-out: {processes} process(es) of --workers 16 ...")
        measured = bench.measure(database, 16, processes)
        bench.add(
            f"scale-out {processes}x16",
            database,
            f"{processes}x16",
            measured,
            payments=n,
            concurrency=16 * processes,
        )


def case_peer(bench: ScaleBench) -> None:
    """The same payments through django-athm 1.0.2's ``PaymentService.sync_status``."""
    progress("  peer: installing django-athm 1.0.2 into .venv-peer (once) ...")
    python = _peer.ensure_peer_python(ROOT)
    n = bench.payments
    payments, _ = bench.refill(n)
    progress(f"  peer: {n} payments, one sync_status call each ...")
    result = _peer.run_peer(
        python,
        bench.sandbox.url,
        _scale.PUBLIC_TOKEN,
        _scale.PRIVATE_TOKEN,
        payments,
        timeout=3600,
    )
    bench.row(
        "peer: django-athm 1.0.2",
        "SQLite",
        "1",
        wall=result["seconds"],
        payments=n,
        concurrency=1,
        calls=bench.sandbox.counts(),
        checked=result["payments"],
        changed=result["changed"],
        signals=0,
        errors=result["errors"] + result.get("swallowed_errors", 0),
        statuses_after=result["statuses"],
    )
    bench.notes.append(
        f"peer: {result['function']}, called once per payment in a loop (the package has "
        f"none of its own). Does: {result['does']} Does not: {result['does_not']}"
    )


MEMORY_STORED, MEMORY_DUE = 100_000, 10_000


def case_memory_and_plan(bench: ScaleBench) -> None:
    """One run with 100,000 stored payments, 10,000 due: peak RSS; on PostgreSQL also the plan
    of the due-payments query, taken before the run."""
    for database in bench.databases():
        bench.prepare(database, MEMORY_DUE, terminal=MEMORY_STORED - MEMORY_DUE)
        if database.startswith("postgresql"):
            progress("  plan: EXPLAIN (ANALYZE, BUFFERS) of the due-payments query ...")
            plan = json.loads(_scale.run_child("explain", database, bench.sandbox.url))
            bench.plan = plan
        progress(f"  memory: {MEMORY_DUE} due of {MEMORY_STORED} stored, --workers 16 ...")
        measured = bench.measure(database, 16)
        bench.add(
            f"memory: {MEMORY_STORED:,} stored",
            database,
            "16",
            measured,
            payments=MEMORY_DUE,
            concurrency=16,
            rss_before_run_mib=round(measured["runs"][0]["rss_before_kib"] / 1024, 1),
        )


def case_webhook(bench: ScaleBench) -> None:
    """The webhook benchmark (its own process), summed up: genuine p50 / p95 at 50 ms."""
    import subprocess

    progress("  webhook: scripts/bench webhook --n 100 ...")
    done = subprocess.run(  # noqa: S603 - our own interpreter and this file
        [sys.executable, __file__, "webhook", "--n", "100", "--json"],
        capture_output=True,
        text=True,
        timeout=1800,
        check=True,
    )
    document = json.loads(done.stdout)
    bench.webhook = [
        {
            "scenario": r["scenario"],
            "sandbox_latency_ms": r["sandbox_latency_ms"],
            "p50": r["latency_ms"]["p50"],
            "p95": r["latency_ms"]["p95"],
        }
        for r in document["results"]
    ]


SCALE_CASES: dict[str, Callable[[ScaleBench], None]] = {
    "baseline": case_baseline,
    "poll": case_poll,
    "scale-out": case_scale_out,
    "peer": case_peer,
    "memory": case_memory_and_plan,
    "webhook": case_webhook,
}


def targets(bench: ScaleBench) -> list[tuple[str, str, bool | None]]:
    """Each target of issue 12: (what, the figures, met?); ``None`` when not measured."""
    found: list[tuple[str, str, bool | None]] = []
    poll = {(r["database"], r["workers"]): r for r in bench.rows if r["case"] == "poll"}
    baseline = next((r for r in bench.rows if r["case"].startswith("baseline")), None)
    reference = f" (bare requests now: {baseline['times_floor']} x)" if baseline else ""
    for database in DATABASE_NAMES.values():
        fast, slow = poll.get((database, "16")), poll.get((database, "1"))
        if fast:
            found.append(
                (
                    f"{database}: --workers 16 within 1.5 x the floor",
                    f"{fast['times_floor']} x{reference}",
                    fast["times_floor"] <= 1.5,
                )
            )
        if fast and slow:
            speedup = slow["wall_seconds"] / fast["wall_seconds"]
            found.append(
                (
                    f"{database}: --workers 16 at least 10 x faster than --workers 1",
                    f"{speedup:.1f} x",
                    speedup >= 10,
                )
            )
    peer = next((r for r in bench.rows if r["case"].startswith("peer")), None)
    ours = poll.get(("SQLite", "16"))
    if peer and ours:
        speedup = peer["wall_seconds"] / ours["wall_seconds"]
        found.append(("at least 10 x faster than the peer", f"{speedup:.1f} x", speedup >= 10))
    one = next((r for r in bench.rows if r["case"] == "scale-out 1x16"), None)
    pair = next((r for r in bench.rows if r["case"] == "scale-out 2x16"), None)
    if one and pair:
        ratio = pair["wall_seconds"] / one["wall_seconds"]
        once = pair["find_payment"] == pair["checked"] == bench.payments
        found.append(
            (
                "two processes at most 0.65 x the time of one, each payment checked once",
                f"{ratio:.2f} x; {pair['find_payment']} findPayment for {bench.payments}",
                ratio <= 0.65 and once,
            )
        )
    for row in bench.rows:
        if row["case"].startswith("memory"):
            found.append(
                (
                    f"{row['database']}: peak RSS under 200 MB, {MEMORY_STORED:,} stored",
                    f"{row['peak_rss_mib']} MiB",
                    row["peak_rss_mib"] * 1.048576 < 200,
                )
            )
    plan = getattr(bench, "plan", None)
    if plan:
        found.append(
            (
                "due-payments query: an index scan reading no terminal rows",
                f"ordered scan of the partial index athm_payment_due_idx (OPEN/CONFIRM, not "
                f"given up: terminal rows are not in it): {'yes' if plan['index_scan'] else 'NO'}"
                f", seq scan {'YES' if plan['seq_scan'] else 'no'}, sort "
                f"{'YES' if plan['sort'] else 'no'}",
                plan["index_scan"] and not plan["seq_scan"] and not plan["sort"],
            )
        )
    for row in getattr(bench, "webhook", []):
        if row["scenario"] == "genuine" and row["sandbox_latency_ms"]:
            limit = row["sandbox_latency_ms"] + 30
            found.append(
                (
                    f"genuine webhook p95 within the sandbox latency + 30 ms ({limit} ms)",
                    f"p95 {row['p95']:.1f} ms (p50 {row['p50']:.1f})",
                    row["p95"] <= limit,
                )
            )
    return found


def print_scale_table(bench: ScaleBench, document: dict[str, Any]) -> None:
    """The readable report of :func:`bench_scale`."""
    env = document["environment"]
    print(
        f"athm_sync at scale: {bench.payments} due payments, {bench.changing:.0%} changing, the "
        f"sandbox (its own process) answering at {bench.latency_ms:g} ms"
    )
    print(
        f"  Python {env['python']}, Django {env['django']}, SQLite {env['sqlite']}, "
        f"{env['cpus']} CPUs, {env['platform']}"
    )
    print("  wall: one run, Django's start excluded; floor: payments x latency / workers")
    print(
        "  CPU s: the measured process's CPU time; ATHM CPU s: the sandbox process's, in the "
        "same interval (both share the machine's cores)"
    )
    print()
    header = (
        f"{'case':<24} {'database':<10} {'workers':>7} {'wall s':>8} {'floor s':>8} "
        f"{'x floor':>7} {'findPayment':>11} {'queries':>8} {'checked':>7} {'changed':>7} "
        f"{'signals':>7} {'errors':>6} {'peak RSS':>9} {'CPU s':>6} {'ATHM CPU s':>10}"
    )
    print(header)
    print("-" * len(header))

    def cell(value: Any, width: int, unit: str = "") -> str:
        return f"{'-' if value is None else f'{value}{unit}':>{width}}"

    for row in bench.rows:
        print(
            f"{row['case']:<24} {row['database']:<10} {row['workers']:>7} "
            f"{row['wall_seconds']:>8.2f} {cell(row.get('floor_seconds'), 8)} "
            f"{cell(row.get('times_floor'), 7)} {row['find_payment']:>11} "
            f"{cell(row['queries'], 8)} {row['checked']:>7} {row['changed']:>7} "
            f"{row['signals']:>7} {row['errors']:>6} {cell(row['peak_rss_mib'], 6, ' MiB')} "
            f"{cell(row.get('cpu_seconds'), 6)} {cell(row.get('sandbox_cpu_seconds'), 10)}"
        )
    for row in getattr(bench, "webhook", []):
        print(
            f"webhook {row['scenario']:<16} {'SQLite':<10} {'':>7} p50 {row['p50']:.1f} ms, "
            f"p95 {row['p95']:.1f} ms, the sandbox at {row['sandbox_latency_ms']} ms"
        )
    plan = getattr(bench, "plan", None)
    if plan:
        print()
        print(
            f"PostgreSQL's plan of the due-payments query ({plan['stored']:,} stored, "
            f"{plan['due']:,} due):"
        )
        for line in plan["plan"]:
            print(f"  {line}")
    print()
    print("targets:")
    for what, figures, met in document["targets"]:
        mark = {True: "met", False: "MISSED", None: "-"}[met]
        print(f"  [{mark:^6}] {what}: {figures}")
    for note in bench.notes:
        print(f"note: {note}")
    print(f"{document['elapsed_seconds']} s in all.")


def bench_scale(argv: Sequence[str], cases: Sequence[str] | None = None) -> int:
    """``scripts/bench`` (all cases) or ``scripts/bench poll|scale-out|peer|memory``; 1 when a
    case failed (the others are still run and printed)."""
    import subprocess
    import tempfile

    parser = _Parser(prog=PROGRAM, description="The poller at scale.")
    parser.add_argument("--payments", type=int, default=2000, help="due payments (2000)")
    parser.add_argument("--latency-ms", type=float, default=40.0, help="sandbox latency (40)")
    parser.add_argument("--json", action="store_true", help="print one JSON document")
    args = parser.parse_args(argv)
    if args.payments < 20:
        raise UsageError(f"--payments must be at least 20, not {args.payments}")
    if not 1 <= args.latency_ms <= 1000:
        raise UsageError(f"--latency-ms must be from 1 to 1000, not {args.latency_ms:g}")
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="athm-bench-scale-") as folder:
        bench = ScaleBench(Path(folder), args.payments, args.latency_ms, changing=0.3)
        failed = []
        try:
            for name in cases or SCALE_CASES:
                # A case that fails is said in the table; the others still run.
                try:
                    SCALE_CASES[name](bench)
                except (RuntimeError, OSError, subprocess.SubprocessError) as error:
                    failed.append(name)
                    bench.notes.append(f"case {name} FAILED: {error}")
                    progress(f"  {name} FAILED: {error}")
                for row in bench.rows[-4:]:
                    progress(f"    {json.dumps(row)}")
        finally:
            bench.close()
    document = {
        "benchmark": "scale",
        "payments": bench.payments,
        "latency_ms": bench.latency_ms,
        "changing": bench.changing,
        "rows": bench.rows,
        "webhook": getattr(bench, "webhook", None),
        "plan": getattr(bench, "plan", None),
        "notes": bench.notes,
        "environment": environment(),
        "elapsed_seconds": round(time.perf_counter() - started, 1),
    }
    document["targets"] = targets(bench)
    if args.json:
        print(json.dumps(document, indent=2))
    else:
        print_scale_table(bench, document)
    return 1 if failed else 0


def _one_case(name: str) -> Callable[[Sequence[str]], int]:
    return lambda argv: bench_scale(argv, [name])


# -- the checkout benchmark ------------------------------------------------------------------

CHECKOUT_TARGETS = {"p95_ms": 3000.0, "calls_per_customer_minute": 30.0}


def checkout_parser() -> _Parser:
    """The options of ``scripts/bench checkout``."""
    parser = _Parser(
        prog=f"{PROGRAM} checkout",
        description="From the customer's approval to the waiting page's status endpoint "
        "answering success, and ATH Móvil calls per waiting customer per minute.",
    )
    parser.add_argument(
        "--customers",
        type=int,
        default=20,
        metavar="N",
        help="customers who approve, one tab each, for the latency (default 20)",
    )
    parser.add_argument(
        "--browser-customers",
        type=int,
        default=10,
        metavar="N",
        help="customers who approve with the waiting page open in headless Chromium, one "
        "after another (default 10; 0 skips the browser)",
    )
    parser.add_argument(
        "--waiting",
        type=int,
        default=5,
        metavar="N",
        help="customers who never approve, for the calls per minute (default 5)",
    )
    parser.add_argument(
        "--tabs",
        default="1,4,16",
        metavar="LIST",
        help="tabs (pollers) per waiting customer, comma-separated (default 1,4,16)",
    )
    parser.add_argument(
        "--seconds",
        type=float,
        default=20.0,
        metavar="S",
        help="how long the waiting customers' tabs poll, per tab count (default 20)",
    )
    parser.add_argument(
        "--latency-ms",
        type=float,
        default=40.0,
        metavar="MS",
        help="added to every sandbox API call (default 40)",
    )
    parser.add_argument(
        "--json", action="store_true", help="print one JSON document instead of the table"
    )
    return parser


class CheckoutBench:
    """Customers waiting on the checkout's page, played by HTTP clients that poll its status
    endpoint as the page's script does (``retry_after`` between answers)."""

    def __init__(self, sandbox: Any, base_url: str) -> None:
        self.sandbox = sandbox
        self.base_url = base_url
        self.completed: list[str] = []
        self._lock = threading.Lock()
        self._orders = 0

    def start(self) -> tuple[str, str]:
        """A checkout started by the shop's view (``athm_sync.checkout.start``, in this
        process); returns (its status URL, its ecommerceId)."""
        from django.test import RequestFactory
        from django.urls import reverse

        from athm_sync.checkout import start
        from athm_sync.checkout.models import Checkout

        self._orders += 1
        response = start(
            RequestFactory().post("/"),
            total="12.50",
            metadata_1=f"bench-{self._orders}",
            phone_number="7875550142",
            success_url="/paid/",
        )
        if response.status_code != 302:
            raise BenchFailure(f"start() answered {response.status_code}, not a redirect")
        checkout = Checkout.objects.get(order_key=f"bench-{self._orders}", order_open=True)
        kwargs = {"checkout_id": checkout.pk, "token": checkout.token}
        return self.base_url + reverse("athm_sync:checkout_status", kwargs=kwargs), str(
            checkout.payment_id
        )

    def tab(self, status_url: str, stop: threading.Event, seen: dict[str, float]) -> None:
        """One tab's script: poll until the answer says where to go, or ``stop``."""
        import random

        import requests

        with requests.Session() as session:
            stop.wait(random.uniform(0, 2))  # noqa: S311 - tabs opened at different moments
            while not stop.is_set():
                answer = session.get(status_url, timeout=30)
                if answer.status_code != 200:
                    raise BenchFailure(f"the status endpoint answered {answer.status_code}")
                data = answer.json()
                if data["next"]:
                    seen.setdefault("at", time.perf_counter())
                    seen["state"] = data["state"]
                    return
                stop.wait(float(data.get("retry_after") or 2))

    def latency(self, customers: int) -> list[float]:
        """Each customer's approval (sandbox confirm) to its tab's first "completed" answer,
        in milliseconds; the customers wait and approve at once, at random moments."""
        import random

        started = [self.start() for _ in range(customers)]
        stop = threading.Event()
        seens: list[dict[str, float]] = [{} for _ in started]
        tabs = [
            threading.Thread(target=self.tab, args=(url, stop, seen), daemon=True)
            for (url, _), seen in zip(started, seens, strict=True)
        ]
        for thread in tabs:
            thread.start()
        approved: list[float] = []
        order = list(range(customers))
        random.shuffle(order)
        moments = sorted(random.uniform(1, 6) for _ in order)  # noqa: S311
        began = time.perf_counter()
        for index, moment in zip(order, moments, strict=True):
            stop.wait(max(0.0, began + moment - time.perf_counter()))
            self.sandbox.confirm(started[index][1])
            approved.append(time.perf_counter())
        by_customer = dict(zip(order, approved, strict=True))
        for thread in tabs:
            thread.join(timeout=60)
        stop.set()
        samples = []
        for index, seen in enumerate(seens):
            if seen.get("state") != "completed":
                raise BenchFailure(f"customer {index} never saw the payment completed: {seen}")
            samples.append((seen["at"] - by_customer[index]) * 1000)
        return samples

    def in_browser(self, customers: int) -> list[float]:
        """Each customer's approval to headless Chromium, showing the waiting page, arriving at
        the shop's success URL, in milliseconds: the page's own script polls, as a customer
        sees it. One customer at a time, approving at a random moment of the poll cycle."""
        import random

        driver = chromium()
        samples = []
        try:
            for index in range(customers):
                status_url, ecommerce_id = self.start()
                driver.get(status_url.removesuffix("status/"))
                time.sleep(random.uniform(0.5, 2.5))  # noqa: S311
                self.sandbox.confirm(ecommerce_id)
                approved = time.perf_counter()
                while not driver.current_url.split("?")[0].endswith("/paid/"):
                    if time.perf_counter() - approved > 30:
                        raise BenchFailure(f"browser customer {index} never reached /paid/")
                    time.sleep(0.005)
                samples.append((time.perf_counter() - approved) * 1000)
        finally:
            driver.quit()
        return samples

    def calls(self, customers: int, tabs: int, seconds: float) -> dict[str, float]:
        """ATH Móvil calls (every API call the sandbox counted) per waiting customer per
        minute, with ``tabs`` tabs each polling for ``seconds``; no customer approves."""
        started = [self.start() for _ in range(customers)]
        stop = threading.Event()
        threads = [
            threading.Thread(target=self.tab, args=(url, stop, {}), daemon=True)
            for url, _ in started
            for _ in range(tabs)
        ]
        before = sum(self.sandbox.counts().values())
        began = time.perf_counter()
        for thread in threads:
            thread.start()
        stop.wait(seconds)
        stop.set()
        for thread in threads:
            thread.join(timeout=60)
        elapsed = time.perf_counter() - began
        api_calls = sum(self.sandbox.counts().values()) - before
        for _, ecommerce_id in started:
            self.sandbox.cancel(ecommerce_id)  # done with them
        return {
            "tabs": tabs,
            "customers": customers,
            "seconds": round(elapsed, 2),
            "api_calls": api_calls,
            "calls_per_customer_minute": round(api_calls / customers / (elapsed / 60), 2),
        }


def chromium_missing() -> str:
    """Why headless Chromium cannot be driven here ('' when it can)."""
    import shutil

    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed (pip install -e .[dev])"
    if shutil.which("chromium") is None or not os.path.exists("/usr/bin/chromedriver"):
        return "Debian's chromium and chromium-driver are not installed"
    return ""


def chromium() -> Any:
    """A headless Chromium (Selenium), phone-sized, loopback only."""
    import shutil

    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium")
    for argument in ("--headless=new", "--no-sandbox", "--disable-gpu", "--no-proxy-server"):
        options.add_argument(argument)
    options.add_argument("--window-size=480,760")
    return webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=options)


def bench_checkout(argv: Sequence[str]) -> int:
    """``scripts/bench checkout``: run it, print the table or the JSON document; 1 when a
    target is missed."""
    args = checkout_parser().parse_args(argv)
    try:
        tab_counts = [int(part) for part in args.tabs.split(",")]
    except ValueError:
        raise UsageError(
            f"--tabs must be whole numbers separated by commas, not {args.tabs!r}"
        ) from None
    if args.customers < 1 or args.waiting < 1 or min(tab_counts) < 1:
        raise UsageError("--customers, --waiting and every --tabs count must be at least 1")
    if args.browser_customers < 0:
        raise UsageError("--browser-customers must be 0 (no browser) or more")
    if args.seconds <= 0 or args.latency_ms < 0:
        raise UsageError("--seconds must be positive and --latency-ms not negative")
    started = time.perf_counter()
    with (
        _shop.throwaway_shop("athm-bench-", urls=_shop.CHECKOUT_URLS) as (sandbox, folder),
        _shop.DjangoServer() as server,
    ):
        import _checkout_shop

        from athm_sync.signals import payment_completed

        _checkout_shop.SANDBOX = sandbox
        signalled: list[str] = []
        payment_completed.connect(
            lambda sender, payment, **kwargs: signalled.append(str(payment.pk)), weak=False
        )
        sandbox.set_latency(args.latency_ms / 1000)
        bench = CheckoutBench(sandbox, server.url)
        counting = _count_requests()
        progress(
            f"Sandbox ATH Móvil at {sandbox.url} (+{args.latency_ms:g} ms); Django at "
            f"{server.url}; project {folder}"
        )
        progress(f"  latency: {args.customers} customers approve at random moments ...")
        authorizations = sandbox.counts().get("authorization", 0)
        samples = bench.latency(args.customers)
        captured = sandbox.counts().get("authorization", 0) - authorizations
        if captured != args.customers or len(signalled) != args.customers:
            raise BenchFailure(
                f"{args.customers} approvals gave {captured} captures and "
                f"{len(signalled)} payment_completed signals"
            )
        browser_skipped = "--browser-customers 0" if args.browser_customers == 0 else ""
        browser_skipped = browser_skipped or chromium_missing()
        in_browser: list[float] = []
        if not browser_skipped:
            progress(f"  in a browser: {args.browser_customers} customers, headless Chromium ...")
            in_browser = bench.in_browser(args.browser_customers)
        rows = []
        for tabs in tab_counts:
            progress(
                f"  calls: {args.waiting} waiting customers x {tabs} tabs, {args.seconds:g} s ..."
            )
            counting()
            rows.append(bench.calls(args.waiting, tabs, args.seconds))
            rows[-1]["status_requests"] = counting()
        stats = summarize(samples)
        browser_stats = summarize(in_browser) if in_browser else None
        worst_p95 = max(stats["p95"], browser_stats["p95"] if browser_stats else 0.0)
        worst = max(row["calls_per_customer_minute"] for row in rows)
        document = {
            "benchmark": "checkout",
            "clients": "HTTP clients (requests.Session per tab) polling the status endpoint as "
            "the waiting page's script does, waiting retry_after between answers; no browser",
            "started_by": "athm_sync.checkout.start() in this process",
            "sandbox_latency_ms": args.latency_ms,
            "poll_interval_s": 2.0,
            "approval_to_success_ms": {key: round(value, 1) for key, value in stats.items()},
            "in_browser_ms": (
                {key: round(value, 1) for key, value in browser_stats.items()}
                if browser_stats
                else None
            ),
            "in_browser_skipped": browser_skipped,
            "calls": rows,
            "targets": {
                "p95 under 3 s": worst_p95 < CHECKOUT_TARGETS["p95_ms"],
                "at most 30 calls per waiting customer per minute": worst
                <= CHECKOUT_TARGETS["calls_per_customer_minute"],
            },
            "environment": environment(),
            "elapsed_seconds": round(time.perf_counter() - started, 1),
        }
    if args.json:
        print(json.dumps(document, indent=2))
    else:
        print_checkout_table(document)
    return 0 if all(document["targets"].values()) else 1


def _count_requests() -> Callable[[], int]:
    """A function returning the requests Django answered since it was last called (only
    the tabs' status requests reach it while the calls are measured)."""
    from django.core.signals import request_finished

    answered = [0]
    request_finished.connect(lambda **kwargs: answered.__setitem__(0, answered[0] + 1), weak=False)

    def since_last() -> int:
        count, answered[0] = answered[0], 0
        return count

    since_last()
    return since_last


def print_checkout_table(document: dict[str, Any]) -> None:
    """The checkout figures as a person reads them."""
    stats = document["approval_to_success_ms"]
    print(
        f"Checkout: the customer's approval to the status endpoint answering success "
        f"(sandbox +{document['sandbox_latency_ms']:g} ms, page polling every "
        f"{document['poll_interval_s']:g} s)"
    )
    print(f"  measured with {document['clients']}")
    print(
        f"  {stats['n']} customers: p50 {stats['p50']:.0f} ms, p95 {stats['p95']:.0f} ms, "
        f"max {stats['max']:.0f} ms"
    )
    shown = document["in_browser_ms"]
    if shown:
        print(
            f"  in headless Chromium, the page's own script, to the shop's success URL: "
            f"{shown['n']} customers: p50 {shown['p50']:.0f} ms, p95 {shown['p95']:.0f} ms, "
            f"max {shown['max']:.0f} ms"
        )
    else:
        print(f"  in a browser: skipped ({document['in_browser_skipped']})")
    print("\n  tabs per customer   status requests   ATH Móvil calls   per customer per minute")
    for row in document["calls"]:
        print(
            f"  {row['tabs']:>17}   {row['status_requests']:>15}   {row['api_calls']:>15}   "
            f"{row['calls_per_customer_minute']:>23.1f}"
        )
    print()
    for name, met in document["targets"].items():
        print(f"  {'met   ' if met else 'MISSED'} {name}")


BENCHMARKS: dict[str, tuple[str, Callable[[Sequence[str]], int]]] = {
    "checkout": (
        "the customer's approval to the waiting page's success, sandbox at 40 ms; ATH Móvil "
        "calls per waiting customer per minute with 1, 4 and 16 tabs",
        bench_checkout,
    ),
    "webhook": (
        "latency of the webhook view over HTTP: genuine, duplicate and forged completions, "
        "the sandbox at 0 and 50 ms",
        bench_webhook,
    ),
    "watch": (
        "a real athm_sync --watch process over 1,000 passes: memory, open files, sockets",
        bench_watch,
    ),
    "poll": (
        "2,000 due payments, 30 % changing, sandbox at 40 ms: --workers 1 and 16, each database",
        lambda argv: bench_scale(argv, ["baseline", "poll"]),
    ),
    "scale-out": (
        "two --workers 16 processes on one PostgreSQL, next to one",
        _one_case("scale-out"),
    ),
    "peer": ("the same payments through django-athm 1.0.2's sync_status", _one_case("peer")),
    "memory": (
        "peak RSS with 100,000 stored, 10,000 due; PostgreSQL's plan of the due query",
        _one_case("memory"),
    ),
}


def usage() -> str:
    """The usage text, listing every benchmark."""
    lines = [f"usage: {PROGRAM} <benchmark> [options]   ({PROGRAM} <benchmark> --help)", ""]
    lines.append("benchmarks:")
    lines.extend(f"  {name:<10} {summary}" for name, (summary, _) in BENCHMARKS.items())
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark named first in ``argv``; 2 for usage errors, 1 for a failed check."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in ("-h", "--help"):
        print(usage())
        return 0
    if not argv or argv[0].startswith("--"):
        # Every case of the poller at scale, and the webhook figures, in one table.
        try:
            return bench_scale(argv)
        except UsageError as error:
            print(f"{PROGRAM}: error: {error}", file=sys.stderr)
            return 2
        except BenchFailure as error:
            print(f"{PROGRAM}: FAILED: {error}", file=sys.stderr)
            return 1
    if argv[0] not in BENCHMARKS:
        if argv:
            print(f"{PROGRAM}: unknown benchmark {argv[0]!r}", file=sys.stderr)
        print(usage(), file=sys.stderr)
        return 2
    name, rest = argv[0], argv[1:]
    try:
        return BENCHMARKS[name][1](rest)
    except UsageError as error:
        print(f"{PROGRAM} {name}: error: {error}", file=sys.stderr)
        return 2
    except BenchFailure as error:
        print(f"{PROGRAM} {name}: FAILED: {error}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
