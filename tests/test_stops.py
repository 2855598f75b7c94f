"""Stops are clean: SIGTERM and SIGINT stop a real run between payments, and a database
connection that dies mid-run ends it in one line.

The children are real ``python -m django athm_sync`` processes on the test database (SQLite
file or PostgreSQL) against the session's sandbox, made slow with its latency so that a run
is surely mid-way; each test waits for a known point (signals logged by the child's
``tests.signal_log`` receiver, calls counted by the sandbox, a line on the child's stderr),
never for a fixed time. After a stop, the next run must send what was left: every payment's
signal exactly once in all.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from datetime import timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from django.db import connection, transaction

from athm_sync import clock, reconcile, runner
from athm_sync.models import Payment, PaymentEvent, SyncRun
from athm_sync.runner import EXIT_ABANDONED
from tests.commands import call
from tests.shop import apps as shop
from tests.shop.models import Fulfilment
from tests.test_overlap import REPO_ROOT, child_env, first_call, track_completed

pytestmark = pytest.mark.django_db(transaction=True)

WAIT = 60  # seconds a test waits at most for a point it expects (a failure, not a pace)
EXIT_FOR = {signal.SIGTERM: 143, signal.SIGINT: 130}


class Child:
    """A real ``athm_sync`` process; its stderr is read line by line as it comes."""

    def __init__(self, env: dict[str, str], *args: str) -> None:
        self.process = subprocess.Popen(  # noqa: S603 - our own interpreter and arguments
            [sys.executable, "-m", "django", "athm_sync", *args],
            cwd=REPO_ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.err_lines: list[str] = []
        self._new_line = threading.Condition()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self.process.stderr:
            with self._new_line:
                self.err_lines.append(line.rstrip("\n"))
                self._new_line.notify_all()

    def wait_for_stderr(self, text: str) -> None:
        with self._new_line:
            found = self._new_line.wait_for(
                lambda: any(text in line for line in self.err_lines), timeout=WAIT
            )
        assert found, f"the child never said {text!r}: {self.err_lines}"

    def finish(self) -> tuple[int, str, list[str]]:
        """Wait for the end; returns (exit code, stdout, stderr lines)."""
        try:
            out = self.process.stdout.read()
            code = self.process.wait(timeout=WAIT)
        finally:
            if self.process.poll() is None:
                self.process.kill()
        self._reader.join(timeout=WAIT)
        return code, out, self.err_lines

    def send(self, signum: int) -> None:
        self.process.send_signal(signum)


def wait_until(condition: Callable[[], bool], what: str) -> None:
    """Poll ``condition`` (the child's log file, the database) until it holds."""
    deadline = time.monotonic() + WAIT
    while not condition():
        assert time.monotonic() < deadline, f"never happened: {what}"
        time.sleep(0.005)


def logged(signal_log: Path) -> Counter:
    """The signals the children sent: (kind, ecommerce id) -> how many times."""
    if not signal_log.exists():
        return Counter()
    return Counter(tuple(line.split()[:2]) for line in signal_log.read_text().splitlines())


def assert_each_signal_sent_once(signal_log: Path, ids: list[str]) -> None:
    sent = logged(signal_log)
    assert sent == Counter({("payment_completed", pk): 1 for pk in ids}), sent
    assert not PaymentEvent.objects.filter(dispatched_at__isnull=True).exists()


def claims_held() -> int:
    return Payment.objects.exclude(claimed_by="").count()


# -- SIGTERM and SIGINT ----------------------------------------------------------------------


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_signal_stops_a_plain_run_between_payments(athm_settings, tmp_path, signum):
    sandbox = athm_settings
    ids = track_completed(sandbox, 40)
    sandbox.set_latency(0.1)
    signal_log = tmp_path / "signals.log"
    env = child_env(sandbox, signal_log)
    child = Child(env, "--json", "--workers", "2")
    wait_until(lambda: sum(logged(signal_log).values()) >= 3, "the run sent its first signals")

    child.send(signum)
    code, out, err = child.finish()

    summary = json.loads(out)
    name = signal.Signals(signum).name
    assert code == EXIT_FOR[signum], err
    assert summary["stopped"] == name and summary["exit_code"] == code
    assert err[-1].startswith(f"athm_sync: stopped by {name} after "), err
    assert not any("Traceback" in line for line in err)
    assert claims_held() == 0
    (run,) = SyncRun.objects.all()
    assert run.finished_at is not None and run.exit_code == code
    assert run.checked == summary["checked"] < len(ids)  # it stopped mid-way
    left = Payment.objects.filter(status="OPEN")
    assert left.count() == len(ids) - summary["checked"]
    assert left.count() == Payment.objects.due(clock.now()).count()  # still due, at once

    sandbox.set_latency(0)
    code, out, err = Child(env, "--json").finish()  # the next run
    assert code == 0, err
    assert_each_signal_sent_once(signal_log, ids)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_signal_stops_a_backfill_between_rows(athm_settings, tmp_path, signum):
    """A backfill of today's report (60 completed payments, not tracked yet) with a receiver
    that takes 20 ms: stopped after its first signals, it has imported some; run again, it
    imports the rest, and every payment's signal is sent once in all."""
    sandbox = athm_settings
    ids = []
    for _ in range(60):
        ecommerce_id, _ = sandbox.create_payment(total="5.00")
        sandbox.complete(ecommerce_id)
        ids.append(ecommerce_id)
    signal_log = tmp_path / "signals.log"
    env = {**child_env(sandbox, signal_log), shop.RECEIVER_ENV: "slow"}
    today = clock.now().astimezone(reconcile.normalize.PUERTO_RICO).date().isoformat()
    backfill = ("--json", "--from-date", today, "--to-date", today)
    child = Child(env, *backfill)
    wait_until(lambda: sum(logged(signal_log).values()) >= 3, "the backfill sent its first signals")

    child.send(signum)
    code, out, err = child.finish()

    summary = json.loads(out)
    assert code == EXIT_FOR[signum], err
    assert summary["stopped"] == signal.Signals(signum).name
    assert 0 < summary["backfill"]["payments_created"] < len(ids)
    (run,) = SyncRun.objects.all()
    assert run.finished_at is not None and run.exit_code == code
    assert claims_held() == 0

    code, out, err = Child(env, *backfill).finish()
    assert code == 0, err
    rest = json.loads(out)["backfill"]["payments_created"]
    assert rest == len(ids) - summary["backfill"]["payments_created"]
    assert Payment.objects.filter(status="COMPLETED").count() == len(ids)
    assert_each_signal_sent_once(signal_log, ids)


def test_a_second_signal_stops_at_once(athm_settings, tmp_path):
    """The first SIGTERM waits for the calls in flight (1 s each); the second does not wait
    for the answers to be applied: exit 143, one line, the claims still released."""
    sandbox = athm_settings
    track_completed(sandbox, 10)
    sandbox.set_latency(1.0)
    with first_call(sandbox) as asked:
        child = Child(child_env(sandbox, tmp_path / "signals.log"), "--workers", "2")
        assert asked.wait(timeout=WAIT), "the child never asked ATH Móvil"
        child.send(signal.SIGTERM)
        child.wait_for_stderr("SIGTERM: the run stops after the payment in hand")
        child.send(signal.SIGTERM)
        code, _, err = child.finish()

    assert code == 143, err
    assert err[-1] == (
        "athm_sync: error: stopped at once by a second SIGTERM; its claims were released"
    )
    assert not any("Traceback" in line for line in err)
    assert claims_held() == 0
    (run,) = SyncRun.objects.all()
    assert run.finished_at is not None and run.exit_code == 143
    assert Payment.objects.filter(status="OPEN").count() == 10  # no answer was applied


def test_a_second_signal_inside_a_query_still_stops_cleanly(athm_settings, monkeypatch):
    """PostgreSQL: the second SIGTERM lands while the run's own connection waits for a query
    (the driver is left mid-protocol): the run still ends as that stop, its claims released
    and its end recorded on a new connection."""
    if connection.vendor != "postgresql":
        pytest.skip("a query the server holds needs PostgreSQL (set DATABASE_URL)")
    track_completed(athm_settings, 3)
    pid = threading.Event()
    backend: list[int] = []
    real_process_webhooks = runner.Runner._process_webhooks

    def slow_webhooks(self: runner.Runner, client: Any) -> None:
        # In a transaction, as the run's writes are: unwinding it must reset the connection.
        with transaction.atomic(), connection.cursor() as cursor:
            cursor.execute("SELECT pg_backend_pid()")
            backend.append(cursor.fetchone()[0])
            pid.set()
            cursor.execute("SELECT pg_sleep(20)")  # the signals land while it waits
        real_process_webhooks(self, client)

    monkeypatch.setattr(runner.Runner, "_process_webhooks", slow_webhooks)

    def signal_twice_once_it_waits() -> None:
        assert pid.wait(timeout=WAIT)

        def waiting() -> bool:  # this thread's own connection watches the run's
            with connection.cursor() as cursor:
                cursor.execute("SELECT wait_event FROM pg_stat_activity WHERE pid = %s", backend)
                return cursor.fetchone()[0] == "PgSleep"

        try:
            wait_until(waiting, "the run's query to wait")
        finally:
            connection.close()
        os.kill(os.getpid(), signal.SIGTERM)
        # Two signals before Python's handler runs would be one: the second waits for it.
        assert first_handled.wait(timeout=WAIT)
        os.kill(os.getpid(), signal.SIGTERM)

    first_handled = threading.Event()
    noticed = logging.Handler()
    noticed.emit = lambda record: first_handled.set()  # type: ignore[method-assign]
    stopping_log = logging.getLogger("athm_sync.stopping")
    stopping_log.addHandler(noticed)
    sender = threading.Thread(target=signal_twice_once_it_waits)
    sender.start()
    try:
        code, _, err = call("athm_sync")
    finally:
        sender.join(timeout=WAIT)
        stopping_log.removeHandler(noticed)
        with connection.cursor() as cursor:  # the server would sleep on: end it now
            cursor.execute("SELECT pg_terminate_backend(%s)", backend)

    assert code == 143, err
    assert err.strip().splitlines()[-1] == (
        "athm_sync: error: stopped at once by a second SIGTERM; its claims were released"
    )
    assert claims_held() == 0  # and the test's own queries work: a new connection
    (run,) = SyncRun.objects.all()
    assert run.finished_at is not None and run.exit_code == 143


def test_an_in_process_run_leaves_the_signal_handlers_as_they_were(athm_settings):
    def mine(signum: int, frame: Any) -> None:
        raise AssertionError("not called")

    before = {sig: signal.signal(sig, mine) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        code, _, err = call("athm_sync")
        after = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
    finally:
        for sig, handler in before.items():
            signal.signal(sig, handler)
    assert code == 0, err
    assert after == {signal.SIGTERM: mine, signal.SIGINT: mine}


def test_a_task_run_in_a_worker_thread_stops_on_the_workers_shutdown(athm_settings):
    """Celery's threads pool runs a task outside the main thread, where no signal handler can
    be installed: the worker's ``worker_shutting_down`` stops the run between payments."""
    pytest.importorskip("celery")
    from celery.signals import worker_shutting_down

    import athm_sync.contrib.celery  # noqa: F401 - connects its worker_shutting_down receiver
    from athm_sync.contrib import jobs

    sandbox = athm_settings
    ids = track_completed(sandbox, 20)
    sandbox.set_latency(0.1)
    answered = threading.Event()
    real_count = sandbox.state.count

    def count(endpoint: str) -> None:
        real_count(endpoint)
        if sandbox.counts().get("findPayment", 0) >= 3:
            answered.set()

    summary: dict[str, Any] = {}

    def task() -> None:
        try:
            summary.update(jobs.sync_run(workers=2))
        finally:
            connection.close()

    handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
    sandbox.state.count = count  # type: ignore[method-assign]
    try:
        thread = threading.Thread(target=task)
        thread.start()
        assert answered.wait(timeout=WAIT), "the run never asked ATH Móvil"
        worker_shutting_down.send(sender="celery@test", sig="SIGTERM", how="Warm", exitcode=0)
        thread.join(timeout=WAIT)
    finally:
        sandbox.state.count = real_count  # type: ignore[method-assign]

    assert summary["stopped"] == "SIGTERM" and summary["exit_code"] == 143
    assert summary["checked"] < len(ids)
    assert SyncRun.objects.get(pk=summary["sync_run_id"]).exit_code == 143
    assert claims_held() == 0
    assert handlers == {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}


# -- a run that dies: its record is closed by the next run -----------------------------------


def test_a_killed_runs_record_is_closed_by_the_next_run(athm_settings, tmp_path, time_machine):
    """SIGKILL leaves the ``SyncRun`` unfinished; once its heartbeat has run out, the next run
    records its end (exit -1, "abandoned"), so ``--health`` does not show it running forever."""
    sandbox = athm_settings
    track_completed(sandbox, 3)
    sandbox.set_latency(5.0)  # the child's calls hang until it is killed
    with first_call(sandbox) as asked:
        child = Child(child_env(sandbox, tmp_path / "signals.log"))
        assert asked.wait(timeout=WAIT), "the child never asked ATH Móvil"
        child.send(signal.SIGKILL)
        child.finish()
    sandbox.set_latency(0)
    killed_at = clock.now()
    (dead,) = SyncRun.objects.all()
    assert dead.finished_at is None and dead.alive_until is not None

    time_machine.move_to(killed_at + timedelta(seconds=5), tick=False)
    call("athm_sync")  # within its heartbeat: it may still be alive
    dead.refresh_from_db()
    assert dead.finished_at is None

    time_machine.move_to(killed_at + reconcile.CLAIM_LEASE + timedelta(seconds=1), tick=False)
    code, _, err = call("athm_sync")
    assert code == 0, err
    dead.refresh_from_db()
    assert dead.finished_at is not None and dead.exit_code == EXIT_ABANDONED
    assert dead.errors[-1]["reason"].startswith("abandoned: the run (pid ")
    assert not SyncRun.objects.filter(finished_at__isnull=True).exists()
    code, _, err = call("athm_sync", "--health")
    assert "has not finished" not in err


def test_a_live_runs_heartbeat_is_renewed_with_its_claims(athm_settings):
    run = SyncRun.objects.create(alive_until=clock.now() + timedelta(seconds=1))
    with reconcile.LeaseKeeper("a-run", lease=timedelta(seconds=0.3), sync_run_id=run.pk) as k:
        assert k.renewed.wait(timeout=WAIT)
    first = run.alive_until
    run.refresh_from_db()
    assert run.alive_until != first


# -- a database connection that dies mid-run (PostgreSQL) ------------------------------------


def terminate_other_backends() -> int:
    """``pg_terminate_backend`` on every connection to the test database but this one's."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE datname = current_database() AND pid <> pg_backend_pid()"
        )
        return len(cursor.fetchall())


KILLS = 12


def test_a_killed_database_connection_is_one_line(athm_settings, tmp_path):
    """The child's connection is terminated at 12 points of its run (after 3, 11, 19...
    calls to ATH Móvil: while it applies transitions, sends signals, writes unchanged checks,
    claims): each time one line on stderr, exit 1, no claim held, its run recorded; in the end
    the shop's receiver wrote its row for every payment exactly once (a file outside the
    database may see a signal twice when the connection dies under it: the documented limit)."""
    if connection.vendor != "postgresql":
        pytest.skip("pg_terminate_backend needs PostgreSQL (set DATABASE_URL)")
    sandbox = athm_settings
    env = {**child_env(sandbox, tmp_path / "signals.log"), shop.RECEIVER_ENV: "instant"}
    ids = track_completed(sandbox, 60)
    for _ in range(120):  # and payments still open, whose checks change nothing
        ecommerce_id, _ = sandbox.create_payment(total="5.00")
        Payment.objects.track(ecommerce_id, total=Decimal("5.00"))
    sandbox.set_latency(0.005)
    real_count = sandbox.state.count
    calls = Counter()
    reached = threading.Event()
    outcomes = []
    try:
        for kill in range(KILLS):
            target = 3 + 8 * kill
            calls.clear()
            reached.clear()

            def count(endpoint: str, target: int = target) -> None:
                real_count(endpoint)
                calls[endpoint] += 1
                if calls["findPayment"] >= target:
                    reached.set()

            sandbox.state.count = count  # type: ignore[method-assign]
            # An earlier kill may leave payments claimed by no one alive: free, as the lease would.
            Payment.objects.update(next_check_at=clock.now())
            child = Child(env, "--json", "--workers", "2")
            assert reached.wait(timeout=WAIT), "the child never got that far"
            killed = terminate_other_backends()
            code, out, err = child.finish()
            outcomes.append((kill, code, killed, err))
            assert code in (0, 1), (kill, err)
            if code == 1:  # the kill landed while the run used its connection
                assert len(err) == 1, (kill, err)
                assert err[0].startswith("athm_sync: error: the database connection was lost: ")
                assert json.loads(out)["exit_code"] == 1
            assert claims_held() == 0, (kill, err)
            assert not SyncRun.objects.filter(finished_at__isnull=True).exists(), (kill, err)
    finally:
        sandbox.state.count = real_count  # type: ignore[method-assign]
    lost = [kill for kill, code, _, _ in outcomes if code == 1]
    print(f"\nconnection killed {KILLS} times; the run met it {len(lost)} times: {lost}")
    assert len(lost) >= KILLS // 2, outcomes

    sandbox.set_latency(0)
    code, _, err = Child(env).finish()  # the next run sends what the killed ones left
    assert code == 0, err
    rows = Counter(
        (str(pk), kind) for pk, kind in Fulfilment.objects.values_list("payment_id", "kind")
    )
    assert rows == Counter({(pk, "payment_completed"): 1 for pk in ids}), rows
    assert not PaymentEvent.objects.filter(dispatched_at__isnull=True).exists()
