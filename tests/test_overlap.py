"""Overlapping runs: two real ``athm_sync`` processes at once fire each signal exactly once.

The children are real ``python -m django athm_sync`` processes on the test database, talking to
the session's sandbox (a loopback server in a thread of this process). The ``tests.signal_log``
app, installed in the children by ``ATHM_TEST_SIGNAL_LOG``, appends one line per signal sent,
``kind ecommerce_id pid``, to a file both children share.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import threading
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from django.conf import settings
from django.core.management import call_command
from django.db import connection

from athm_sync import clock, signals
from athm_sync.models import Payment, PaymentEvent, SyncRun
from athm_sync.sandbox import SandboxServer

REPO_ROOT = Path(__file__).resolve().parent.parent
CHILD_TIMEOUT = 120
WORKERS = 4
COMMAND = [sys.executable, "-m", "django", "athm_sync", "--json", "--workers", str(WORKERS)]
# Each findPayment waits this long, so that the two runs really overlap.
LATENCY = 0.01
# The start gate waits at most this long: less than the children's read timeout (tests.settings).
GATE_TIMEOUT = 1.5


class StartGate:
    """Holds the first findPayment calls until more are waiting than one run can make at once.

    A run has at most ``--workers`` calls in flight, so once ``WORKERS + 1`` are held, both runs
    have claimed payments and started asking: neither can finish alone before the other starts,
    however unevenly the two interpreters start up. Gives up waiting after ``GATE_TIMEOUT``.
    """

    def __init__(self, find_payment: Any, parties: int = WORKERS + 1) -> None:
        self._find_payment = find_payment
        self._parties = parties
        self._condition = threading.Condition()
        self._waiting = 0
        self.opened = False
        self.timed_out = False

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        with self._condition:
            if not self.opened:
                self._waiting += 1
                if self._waiting >= self._parties:
                    self.opened = True
                    self._condition.notify_all()
                elif not self._condition.wait_for(lambda: self.opened, timeout=GATE_TIMEOUT):
                    self.opened = self.timed_out = True
                    self._condition.notify_all()
        return self._find_payment(*args, **kwargs)


@contextmanager
def first_call(sandbox: SandboxServer) -> Iterator[threading.Event]:
    """An event set once the sandbox is asked anything (it counts a call before it waits out
    its latency): a test waits on it to know a child is surely mid-call. Restored after."""
    asked = threading.Event()
    real_count = sandbox.state.count

    def count(endpoint: str) -> None:
        real_count(endpoint)
        asked.set()

    sandbox.state.count = count  # type: ignore[method-assign]
    try:
        yield asked
    finally:
        sandbox.state.count = real_count  # type: ignore[method-assign]


def track_completed(sandbox: SandboxServer, count: int = 1) -> list[str]:
    """``count`` payments the customers completed, tracked locally and due now."""
    ids = []
    for _ in range(count):
        ecommerce_id, _token = sandbox.create_payment(total="5.00")
        sandbox.complete(ecommerce_id)
        Payment.objects.track(ecommerce_id, total=Decimal("5.00"))
        ids.append(ecommerce_id)
    return ids


def child_env(sandbox: SandboxServer, signal_log: Path) -> dict[str, str]:
    """The environment of a child run: this test database, the sandbox, the signal log."""
    env = {
        key: value
        for key, value in os.environ.items()
        if key not in ("DATABASE_URL", "ATHM_TEST_SQLITE", "ATHM_TEST_SIGNAL_LOG")
    }
    db = connection.settings_dict
    if connection.vendor == "postgresql":
        user = quote(db["USER"] or "postgres", safe="")
        password = f":{quote(db['PASSWORD'], safe='')}" if db["PASSWORD"] else ""
        host = db["HOST"] or "127.0.0.1"
        port = db["PORT"] or "5432"
        env["DATABASE_URL"] = f"postgresql://{user}{password}@{host}:{port}/{db['NAME']}"
    else:
        env["ATHM_TEST_SQLITE"] = str(db["NAME"])
    python_path = [str(REPO_ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]
    env.update(
        # Under the ``settings`` fixture SETTINGS_MODULE is not there; the environment's is.
        DJANGO_SETTINGS_MODULE=settings.SETTINGS_MODULE
        or os.environ.get("DJANGO_SETTINGS_MODULE", "tests.settings"),
        PYTHONPATH=os.pathsep.join(python_path),
        ATHM_TEST_SIGNAL_LOG=str(signal_log),
        ATHM_TEST_API_BASE_URL=sandbox.url,
    )
    return env


def start_child(env: dict[str, str]) -> subprocess.Popen:
    """A real ``athm_sync --json`` run in the background; its stdout and stderr are piped."""
    return subprocess.Popen(  # noqa: S603 - our own interpreter and arguments
        COMMAND,
        cwd=REPO_ROOT,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def run_two_at_once(env: dict[str, str]) -> list[tuple[int, int, str, str]]:
    """Start two runs together, wait for both; returns (pid, exit code, stdout, stderr) of each."""
    children = [start_child(env) for _ in range(2)]
    results = []
    try:
        for child in children:
            stdout, stderr = child.communicate(timeout=CHILD_TIMEOUT)
            results.append((child.pid, child.returncode, stdout, stderr))
    finally:
        for child in children:
            if child.poll() is None:
                child.kill()
                child.communicate()
    return results


def read_signal_log(path: Path) -> list[tuple[str, str, int]]:
    if not path.exists():
        return []
    lines = path.read_text().splitlines()
    entries = []
    for line in lines:
        kind, ecommerce_id, pid = line.split(" ")  # a torn line would fail here
        entries.append((kind, ecommerce_id, int(pid)))
    return entries


def summaries(results: list[tuple[int, int, str, str]]) -> list[dict[str, Any]]:
    return [json.loads(stdout) for _pid, _code, stdout, _stderr in results]


def assert_overlapping_runs(
    sandbox: SandboxServer, count: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> dict[str, Any]:
    """Two runs over ``count`` completed payments: each ``payment_completed`` sent once."""
    ids = track_completed(sandbox, count)
    sandbox.reset_counts()
    sandbox.set_latency(LATENCY)
    gate = StartGate(sandbox.state.payment_data)
    monkeypatch.setattr(sandbox.state, "payment_data", gate)
    signal_log = tmp_path / "signals.log"

    results = run_two_at_once(child_env(sandbox, signal_log))

    for _pid, code, stdout, stderr in results:
        assert code == 0, f"exit {code}\nstdout:\n{stdout}\nstderr:\n{stderr}"
        assert "database is locked" not in stderr
    runs = summaries(results)
    entries = read_signal_log(signal_log)
    kinds = Counter(kind for kind, _id, _pid in entries)
    assert kinds == {"payment_completed": count}, kinds
    per_payment = Counter(ecommerce_id for _kind, ecommerce_id, _pid in entries)
    assert sorted(per_payment) == sorted(ids)
    assert set(per_payment.values()) == {1}

    assert Payment.objects.count() == count
    assert Payment.objects.filter(status=Payment.Status.COMPLETED).count() == count
    assert PaymentEvent.objects.count() == count
    assert PaymentEvent.objects.filter(kind=PaymentEvent.Kind.COMPLETED).count() == count
    assert not PaymentEvent.objects.filter(dispatched_at__isnull=True).exists()
    assert not Payment.objects.exclude(claimed_by="").exists()
    assert sorted(SyncRun.objects.values_list("exit_code", flat=True)) == [0, 0]

    # Both runs took a share: the claims split the work rather than one run doing it all.
    assert gate.opened
    checked = [run["checked"] for run in runs]
    assert all(n > 0 for n in checked), f"one run did all the work: checked {checked}"
    assert sum(checked) >= count
    signal_pids = Counter(pid for _kind, _id, pid in entries)
    assert set(signal_pids) == {pid for pid, *_rest in results}, f"signals by {signal_pids}"
    assert sum(run["signals_sent"] for run in runs) == count
    find_payment_calls = sandbox.counts()["findPayment"]
    assert find_payment_calls >= count
    report = {
        "checked": checked,
        "checked_sum": sum(checked),
        "signals_by_pid": dict(signal_pids),
        "findPayment": find_payment_calls,
        "gate_timed_out": gate.timed_out,
    }
    print(f"overlap over {count} payments: {report}")
    return report


@pytest.mark.django_db(transaction=True)
def test_two_processes_on_postgresql_fire_each_of_200_signals_once(
    sandbox: SandboxServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    if connection.vendor != "postgresql":
        pytest.skip("SKIP LOCKED claims across processes need PostgreSQL (set DATABASE_URL)")
    assert_overlapping_runs(sandbox, 200, tmp_path, monkeypatch)


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("transaction_mode", ["immediate", "deferred"])
def test_two_processes_on_sqlite_fire_each_signal_once_without_a_lock_error(
    sandbox: SandboxServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, transaction_mode: str
) -> None:
    """Deferred (Django's default) makes SQLite refuse writes with "database is locked" at once
    while the other run writes: the runs must retry, not crash."""
    if connection.vendor != "sqlite":
        pytest.skip("the SQLite variant of the overlap test")
    if connection.is_in_memory_db():
        pytest.skip("child processes cannot share an in-memory SQLite database")
    if transaction_mode == "deferred":
        monkeypatch.setenv("ATHM_TEST_SQLITE_DEFERRED", "1")
    else:
        monkeypatch.delenv("ATHM_TEST_SQLITE_DEFERRED", raising=False)
    assert_overlapping_runs(sandbox, 60, tmp_path, monkeypatch)


@pytest.mark.django_db(transaction=True)
def test_a_claim_whose_holder_died_expires_and_the_next_run_checks_it(
    athm_settings: SandboxServer,
) -> None:
    sandbox = athm_settings
    dead, alive = track_completed(sandbox, 2)
    now = clock.now()
    # A run claimed both; the holder of the first died and its lease ran out, the second's
    # holder is still within its lease.
    Payment.objects.filter(pk=dead).update(
        claimed_by="dead-run", claimed_until=now - timedelta(seconds=1)
    )
    Payment.objects.filter(pk=alive).update(
        claimed_by="live-run", claimed_until=now + timedelta(minutes=5)
    )
    sandbox.reset_counts()
    completed = []

    def receiver(sender: Any, payment: Payment, **kwargs: Any) -> None:
        completed.append(str(payment.pk))

    signals.payment_completed.connect(receiver, weak=False)
    try:
        stdout = io.StringIO()
        call_command("athm_sync", "--json", stdout=stdout)
    finally:
        signals.payment_completed.disconnect(receiver)

    assert json.loads(stdout.getvalue())["checked"] == 1
    assert completed == [dead]
    assert sandbox.counts()["findPayment"] == 1
    taken = Payment.objects.get(pk=dead)
    assert taken.status == Payment.Status.COMPLETED
    assert (taken.claimed_by, taken.claimed_until) == ("", None)
    held = Payment.objects.get(pk=alive)
    assert held.status == Payment.Status.OPEN
    assert held.claimed_by == "live-run"
    assert held.check_count == 0
