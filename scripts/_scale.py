"""The poller at scale, for ``scripts/bench``: poll, scale-out, peer, memory and plan.

Two roles, like ``_peer.py``:

- imported by ``scripts/bench.py``: :class:`Sandbox` runs the sandbox ATH Móvil server as a
  process of its own (``python -m athm_sync.sandbox``, as a shop's real ATH Móvil is another
  machine: it must not share the measured process's GIL) and fills it through its control API;
  :func:`start_child` starts the measured process;
- run as ``python scripts/_scale.py <setup|run|explain> --database D --sandbox URL``: a Django
  configured in-process (``settings.configure``, no project files) with athm_sync on SQLite
  (``sqlite:PATH``) or PostgreSQL (``postgresql:NAME`` on 127.0.0.1:5432, user postgres).

  - ``setup --payments FILE [--terminal N]``: migrate, empty the app's tables, store the given
    payments with ``bulk_create`` (as a shop storing many rows does), due now, and ``N`` more
    payments already COMPLETED (stored, never due);
  - ``run --workers W``: print ``ready``, wait for a line on stdin (so that two processes start
    together), then one :class:`athm_sync.runner.Runner` run, timed from its start to its end
    (Django's start excluded), the main thread's queries counted with
    ``connection.execute_wrapper``; prints one JSON object;
  - ``explain``: PostgreSQL's ``EXPLAIN (ANALYZE, BUFFERS)`` of the claim's due-payments query,
    in a transaction rolled back afterwards.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import subprocess
import sys
import time
from collections.abc import Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any

HOST = "127.0.0.1"
PUBLIC_TOKEN = "sandbox-public-token"  # noqa: S105 - the sandbox's, not a secret
PRIVATE_TOKEN = "sandbox-private-token"  # noqa: S105
POSTGRES = {"HOST": HOST, "PORT": "5432", "USER": "postgres"}
TERMINAL_CHUNK = 5000


# -- the sandbox, as a process of its own ---------------------------------------------------------


class Sandbox:
    """``python -m athm_sync.sandbox`` on a free loopback port, driven over its control API."""

    def __init__(self) -> None:
        import requests

        self.process = subprocess.Popen(  # noqa: S603 - our own interpreter and module
            [sys.executable, "-m", "athm_sync.sandbox", "--host", HOST, "--port", "0"],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        assert self.process.stdout is not None
        first = self.process.stdout.readline()
        match = re.search(r"(http://127\.0\.0\.1:\d+)", first)
        if not match:
            self.process.kill()
            raise RuntimeError(f"the sandbox did not start: {first.strip()!r}")
        self.url = match.group(1)
        self.session = requests.Session()

    def _call(self, method: str, path: str, body: Any = None) -> Any:
        answer = self.session.request(method, f"{self.url}/sandbox{path}", json=body, timeout=30)
        answer.raise_for_status()
        return answer.json()

    def fill(self, count: int, changing: float) -> list[dict[str, str]]:
        """Forget everything, then create ``count`` OPEN payments and complete the first
        ``changing`` fraction of them (paid by the customer, not yet known to the shop)."""
        self._call("POST", "/reset")
        self.set_latency(0)
        payments = []
        completed = round(count * changing)
        for index in range(count):
            metadata = f"order-{index}"
            created = self._call("POST", "/payments", {"total": "10.00", "metadata1": metadata})
            ecommerce_id = created["ecommerceId"]
            if index < completed:
                self._call("POST", f"/payments/{ecommerce_id}/complete", {})
            payments.append(
                {"ecommerce_id": ecommerce_id, "total": "10.00", "metadata_1": metadata}
            )
        return payments

    def set_latency(self, milliseconds: float) -> None:
        self._call("POST", "/latency", {"seconds": milliseconds / 1000})

    def reset_counts(self) -> None:
        self._call("DELETE", "/requests")

    def counts(self) -> dict[str, int]:
        return {name: n for name, n in self._call("GET", "/requests").items() if n}

    def cpu_seconds(self) -> float:
        """CPU time the sandbox process has used so far (Linux /proc)."""
        fields = Path(f"/proc/{self.process.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def stop(self) -> None:
        self.session.close()
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()


# -- the measured process -------------------------------------------------------------------


def child_command(action: str, database: str, sandbox_url: str) -> list[str]:
    return [sys.executable, __file__, action, "--database", database, "--sandbox", sandbox_url]


def run_child(action: str, database: str, sandbox_url: str, *extra: str) -> str:
    """Run one child to its end; returns its stdout. Raises RuntimeError if it fails."""
    done = subprocess.run(  # noqa: S603 - our own interpreter and this file
        [*child_command(action, database, sandbox_url), *extra],
        capture_output=True,
        text=True,
        timeout=3600,
        check=False,
    )
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["(no output)"])[-1]
        raise RuntimeError(f"{action} failed (exit {done.returncode}): {last}")
    return done.stdout


def start_child(database: str, sandbox_url: str, workers: int) -> subprocess.Popen[str]:
    """Start a ``run`` child and wait until it says ``ready`` (Django started)."""
    child = subprocess.Popen(  # noqa: S603 - our own interpreter and this file
        [*child_command("run", database, sandbox_url), "--workers", str(workers)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert child.stdout is not None
    line = child.stdout.readline()
    if line.strip() != "ready":
        child.kill()
        _, err = child.communicate()
        last = (err.strip().splitlines() or ["(no output)"])[-1]
        raise RuntimeError(f"the measured process did not start: {last}")
    return child


def go(children: Sequence[subprocess.Popen[str]]) -> list[dict[str, Any]]:
    """Let the ready children run together; returns each one's JSON result."""
    for child in children:
        assert child.stdin is not None
        child.stdin.write("go\n")
        child.stdin.flush()
    results = []
    for child in children:
        out, err = child.communicate(timeout=3600)
        if child.returncode != 0:
            last = (err.strip().splitlines() or ["(no output)"])[-1]
            raise RuntimeError(f"the measured run failed (exit {child.returncode}): {last}")
        results.append(json.loads(out.strip().splitlines()[-1]))
    return results


# -- inside the child -------------------------------------------------------------------------


def _configure(database: str, sandbox_url: str) -> None:
    import django
    from django.conf import settings

    kind, _, name = database.partition(":")
    if kind in ("sqlite", "sqlite-wal"):
        options = {"transaction_mode": "IMMEDIATE"}
        if kind == "sqlite-wal":
            # What many SQLite deployments set: no fsync per commit, only at checkpoints.
            options["init_command"] = "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;"
        db = {"ENGINE": "django.db.backends.sqlite3", "NAME": name, "OPTIONS": options}
    elif kind == "postgresql":
        db = {"ENGINE": "django.db.backends.postgresql", "NAME": name, **POSTGRES}
    else:
        raise SystemExit(
            f"--database must be sqlite:PATH, sqlite-wal:PATH or postgresql:NAME, not {database!r}"
        )
    settings.configure(
        SECRET_KEY="bench-only",  # noqa: S106
        USE_TZ=True,
        INSTALLED_APPS=["django.contrib.contenttypes", "athm_sync"],
        DATABASES={"default": db},
        ATHM_SYNC={
            "PUBLIC_TOKEN": PUBLIC_TOKEN,
            "PRIVATE_TOKEN": PRIVATE_TOKEN,
            "API_BASE_URL": sandbox_url,
            "REPORT_BASE_URL": sandbox_url,
        },
        LOGGING={
            "version": 1,
            "disable_existing_loggers": False,
            "loggers": {"athm_sync": {"level": "ERROR"}},
        },
    )
    django.setup()


def _setup(payments_file: str, terminal: int) -> dict[str, Any]:
    import uuid
    from decimal import Decimal

    from django.core.management import call_command
    from django.db import connection

    from athm_sync import clock
    from athm_sync.models import Payment, PaymentEvent, Refund, ReportScan, SyncRun, WebhookEvent

    call_command("migrate", verbosity=0)
    models = (PaymentEvent, Refund, WebhookEvent, SyncRun, ReportScan, Payment)
    if connection.vendor == "postgresql":
        # TRUNCATE, not DELETE: an earlier case's dead rows would stay in the indexes.
        tables = ", ".join(connection.ops.quote_name(m._meta.db_table) for m in models)
        with connection.cursor() as cursor:
            cursor.execute(f"TRUNCATE {tables} CASCADE")
    else:
        for model in models:
            model.objects.all().delete()
    now = clock.now()
    # The refund scan is not measured here: it is done "a minute ago" for every run.
    ReportScan.objects.create(name="refunds", next_scan_at=now + timedelta(hours=1))
    given = json.loads(Path(payments_file).read_text())
    due = now - timedelta(seconds=1)
    Payment.objects.bulk_create(
        [
            Payment(
                ecommerce_id=uuid.UUID(row["ecommerce_id"]),
                total=Decimal(row["total"]),
                metadata_1=row["metadata_1"],
                created_at=now - timedelta(seconds=30),
                next_check_at=due,
            )
            for row in given
        ],
        batch_size=1000,
    )
    for start in range(0, terminal, TERMINAL_CHUNK):
        size = min(TERMINAL_CHUNK, terminal - start)
        Payment.objects.bulk_create(
            [
                Payment(
                    ecommerce_id=uuid.uuid4(),
                    status=Payment.Status.COMPLETED,
                    total=Decimal("10.00"),
                    reference_number=f"bench-{start + i}",
                    created_at=now - timedelta(days=30),
                    next_check_at=now - timedelta(days=30),
                )
                for i in range(size)
            ],
            batch_size=1000,
        )
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute("VACUUM ANALYZE athm_sync_payment")
    return {"stored": Payment.objects.count(), "due": Payment.objects.due().count()}


def _create_postgres_database(name: str) -> None:
    import psycopg
    from psycopg import sql

    with psycopg.connect(
        host=HOST, port=5432, user="postgres", dbname="postgres", autocommit=True
    ) as conn:
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [name]).fetchone()
        if not exists:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))


def _memory_kib() -> dict[str, int]:
    figures = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            figures[key] = int(value.split()[0])
    return figures


class _AllThreads:
    """A CPU profile of every thread (yappi, when importable: ``pip install yappi``), else
    cProfile of this thread only; ``dump_stats`` writes pstats."""

    def __init__(self) -> None:
        try:
            import yappi
        except ImportError:
            import cProfile

            self.yappi = None
            self.profile = cProfile.Profile()
        else:
            self.yappi = yappi
            yappi.set_clock_type("cpu")

    def enable(self) -> None:
        if self.yappi:
            self.yappi.start()
        else:
            self.profile.enable()

    def disable(self) -> None:
        if self.yappi:
            self.yappi.stop()
        else:
            self.profile.disable()

    def dump_stats(self, path: str) -> None:
        if self.yappi:
            self.yappi.get_func_stats().save(path, type="pstat")
            threads = self.yappi.get_thread_stats()
            by_name: dict[str, float] = {}
            for thread in threads:
                kind = "main" if thread.name == "_MainThread" else thread.name.split("_")[0]
                by_name[kind] = by_name.get(kind, 0.0) + thread.ttot
            Path(path + ".threads.json").write_text(json.dumps(by_name))
        else:
            self.profile.dump_stats(path)


def _run(workers: int) -> dict[str, Any]:
    from django.db import connection

    from athm_sync.runner import Runner, RunOptions

    queries = 0

    def count(execute, sql, params, many, context):
        nonlocal queries
        queries += 1
        return execute(sql, params, many, context)

    connection.ensure_connection()
    before = _memory_kib()
    print("ready", flush=True)
    sys.stdin.readline()
    profile_to = os.environ.get("ATHM_BENCH_PROFILE")
    profiler = _AllThreads() if profile_to else None
    cpu_before = resource.getrusage(resource.RUSAGE_SELF)
    with connection.execute_wrapper(count):
        started = time.time()
        clock = time.perf_counter()
        if profiler is not None:
            profiler.enable()
        report = Runner(RunOptions(workers=workers)).run()
        if profiler is not None:
            profiler.disable()
        seconds = time.perf_counter() - clock
        ended = time.time()
    cpu_after = resource.getrusage(resource.RUSAGE_SELF)
    if profiler is not None:
        profiler.dump_stats(profile_to)
    user = cpu_after.ru_utime - cpu_before.ru_utime
    system = cpu_after.ru_stime - cpu_before.ru_stime
    switches = (cpu_after.ru_nvcsw - cpu_before.ru_nvcsw) + (
        cpu_after.ru_nivcsw - cpu_before.ru_nivcsw
    )
    after = _memory_kib()
    return {
        "seconds": seconds,
        "cpu_seconds": user + system,
        "system_cpu_seconds": system,
        "context_switches": switches,
        "started": started,
        "ended": ended,
        "queries": queries,
        "report": report.as_json(),
        "rss_before_kib": before.get("VmRSS", 0),
        "peak_rss_kib": after.get("VmHWM", 0),
    }


def _baseline(payments_file: str, workers: int, sandbox_url: str) -> dict[str, Any]:
    """The same findPayment calls from a bare ``requests.Session`` in ``workers`` threads, no
    Django: the best a Python process does on this machine at this moment."""
    from concurrent.futures import ThreadPoolExecutor

    import requests
    from requests.adapters import HTTPAdapter

    ids = [row["ecommerce_id"] for row in json.loads(Path(payments_file).read_text())]
    session = requests.Session()
    session.mount("http://", HTTPAdapter(pool_maxsize=workers))
    url = f"{sandbox_url}/api/business-transaction/ecommerce/business/findPayment"

    def find(ecommerce_id: str) -> None:
        session.post(url, json={"ecommerceId": ecommerce_id, "publicToken": PUBLIC_TOKEN}).json()

    started = time.time()
    clock = time.perf_counter()
    with ThreadPoolExecutor(workers) as pool:
        list(pool.map(find, ids))
    seconds = time.perf_counter() - clock
    return {"seconds": seconds, "started": started, "ended": time.time(), "calls": len(ids)}


def _explain() -> dict[str, Any]:
    from django.db import connection, transaction

    from athm_sync import clock, reconcile
    from athm_sync.models import Payment

    now = clock.now()
    # The query claim_due runs, for a batch of 64.
    query = reconcile.claimable(now).values_list("pk", flat=True)[:64]
    with transaction.atomic(), connection.cursor() as cursor:
        sql, params = query.query.sql_with_params()  # FOR UPDATE: only inside a transaction
        cursor.execute(f"EXPLAIN (ANALYZE, BUFFERS) {sql}", params)
        plan = [row[0] for row in cursor.fetchall()]
        transaction.set_rollback(True)
    text = "\n".join(plan)
    return {
        "plan": plan,
        "index_scan": "Index Scan using athm_payment_due_idx" in text,
        "sort": "Sort" in text,
        "seq_scan": "Seq Scan" in text,
        "rows_removed_by_filter": sum(
            int(n) for n in re.findall(r"Rows Removed by Filter: (\d+)", text)
        ),
        "stored": Payment.objects.count(),
        "due": Payment.objects.due(now).count(),
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="scripts/_scale.py")
    parser.add_argument("action", choices=("setup", "run", "explain", "baseline"))
    parser.add_argument("--database", required=True)
    parser.add_argument("--sandbox", required=True)
    parser.add_argument("--payments")
    parser.add_argument("--terminal", type=int, default=0)
    parser.add_argument("--workers", type=int, default=16)
    args = parser.parse_args(argv)
    if not args.sandbox.startswith(f"http://{HOST}:"):
        raise SystemExit("the sandbox must be on 127.0.0.1")
    if args.action == "baseline":
        print(json.dumps(_baseline(args.payments, args.workers, args.sandbox)), flush=True)
        return 0
    os.environ.pop("DJANGO_SETTINGS_MODULE", None)
    if args.action == "setup" and args.database.startswith("postgresql:"):
        _create_postgres_database(args.database.partition(":")[2])
    _configure(args.database, args.sandbox)
    if args.action == "setup":
        result = _setup(args.payments, args.terminal)
    elif args.action == "run":
        result = _run(args.workers)
    else:
        result = _explain()
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
