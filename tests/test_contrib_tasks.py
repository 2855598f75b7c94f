"""``athm_sync.contrib.tasks``: Django's tasks framework, with a real ``db_worker`` process.

The framework is ``django.tasks`` on Django 6 and the ``django_tasks`` backport on 5.2; the
tests use whichever ``athm_sync.contrib.tasks`` found (``FRAMEWORK``), and ``django-tasks-db``
works on both. For this module the test process installs ``django_tasks_db`` and migrates its
table into the test database (and migrates it away afterwards), so that it can enqueue; the
worker is ``manage.py db_worker --batch`` (run what is queued, then exit) in a throwaway
project written to a temporary folder: the suite's settings on this test database, the
session's sandbox as ATH Móvil, and the ``tests.signal_log`` app logging each signal it sends.
"""

from __future__ import annotations

import importlib
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from datetime import timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from django.conf import settings
from django.contrib import admin
from django.core.management import call_command
from django.db import connection
from django.db.migrations.recorder import MigrationRecorder
from django.test import override_settings

from athm_sync import clock, locks
from athm_sync.models import Payment, SyncRun
from athm_sync.sandbox import SandboxServer
from tests.test_overlap import child_env

pytest.importorskip("django_tasks_db", reason="needs django-tasks-db (a database task backend)")

from athm_sync.contrib import tasks

WORKER_TIMEOUT = 120
DATABASE_BACKEND = {"default": {"BACKEND": "django_tasks_db.DatabaseBackend"}}
IMMEDIATE_BACKEND = {
    "default": {"BACKEND": f"{tasks.FRAMEWORK}.backends.immediate.ImmediateBackend"}
}

SETTINGS = """\
from tests.settings import *  # noqa: F403

INSTALLED_APPS = [*INSTALLED_APPS, "django_tasks_db"]  # noqa: F405
TASKS = {{"default": {{"BACKEND": "django_tasks_db.DatabaseBackend"}}}}
{extra}
"""


@pytest.fixture(scope="module")
def tasks_database(django_db_setup: Any, django_db_blocker: Any) -> Iterator[None]:
    """``django_tasks_db`` installed and its table in the test database, for this module."""
    with override_settings(
        INSTALLED_APPS=[*settings.INSTALLED_APPS, "django_tasks_db"], TASKS=DATABASE_BACKEND
    ):
        with django_db_blocker.unblock():
            call_command("migrate", "django_tasks_database", verbosity=0)
        try:
            yield
        finally:
            # Its migrations cannot be unapplied (RunPython without a reverse): drop the table
            # and forget them, leaving the test database as the rest of the suite knows it.
            from django_tasks_db.models import DBTaskResult

            with django_db_blocker.unblock():
                with connection.schema_editor() as editor:
                    editor.delete_model(DBTaskResult)
                recorder = MigrationRecorder(connection)
                recorder.migration_qs.filter(app=DBTaskResult._meta.app_label).delete()
            # Installing the app ran the admin's autodiscovery, which registered its model.
            if admin.site.is_registered(DBTaskResult):
                admin.site.unregister(DBTaskResult)


class Shop:
    """The throwaway project the worker runs in."""

    def __init__(self, folder: Path, sandbox: SandboxServer) -> None:
        self.folder = folder
        self.signal_log = folder / "signals.log"
        self.signal_log.write_text("")
        self.env = child_env(sandbox, self.signal_log)
        self.env["PYTHONPATH"] = os.pathsep.join([str(folder), self.env["PYTHONPATH"]])

    def work(self, extra_settings: str = "") -> subprocess.CompletedProcess[str]:
        """``manage.py db_worker --batch``: run every queued task, then exit."""
        args, options = self._worker(extra_settings)
        done = subprocess.run(  # noqa: S603 - our own interpreter and arguments
            args, capture_output=True, timeout=WORKER_TIMEOUT, check=False, **options
        )
        assert done.returncode == 0, done.stdout + done.stderr
        return done

    def start(self) -> subprocess.Popen[str]:
        """The same worker, in the background (stdout and stderr piped)."""
        args, options = self._worker("")
        return subprocess.Popen(  # noqa: S603 - our own interpreter and arguments
            args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, **options
        )

    def _worker(self, extra_settings: str) -> tuple[list[str], dict[str, Any]]:
        module = f"athm_tasks_settings_{uuid.uuid4().hex[:8]}"
        (self.folder / f"{module}.py").write_text(SETTINGS.format(extra=extra_settings))
        args = [
            sys.executable,
            "-m",
            "django",
            "db_worker",
            "--batch",
            "--no-startup-delay",
            "--no-reload",
            "--interval",
            "0",
        ]
        env = {**self.env, "DJANGO_SETTINGS_MODULE": module}
        return args, {"cwd": self.folder, "env": env, "text": True}

    def signals(self) -> list[list[str]]:
        return [line.split() for line in self.signal_log.read_text().splitlines()]


@pytest.fixture
def shop(tasks_database, athm_settings, tmp_path) -> Shop:
    return Shop(tmp_path, athm_settings)


def tracked_completed(sandbox: SandboxServer) -> str:
    ecommerce_id, _ = sandbox.create_payment(total="12.50")
    sandbox.complete(ecommerce_id)
    Payment.objects.track(ecommerce_id, total=Decimal("12.50"))
    return ecommerce_id


def finished(result: Any) -> Any:
    result.refresh()
    return result


# The worker and this process share the database: what one commits, the other sees.
with_worker = pytest.mark.django_db(transaction=True)


@with_worker
def test_a_queued_run_completes_a_paid_payment_once(shop, athm_settings):
    ecommerce_id = tracked_completed(athm_settings)
    result = tasks.sync.enqueue()
    assert result.status == "READY"

    shop.work()

    result = finished(result)
    assert result.status == "SUCCESSFUL", result.errors
    summary = result.return_value
    assert summary["skipped"] is False and summary["exit_code"] == 0
    assert summary["transitions"]["completed"] == 1
    assert Payment.objects.get(pk=ecommerce_id).status == "COMPLETED"
    assert SyncRun.objects.get(pk=summary["sync_run_id"]).exit_code == 0
    ((kind, paid, pid),) = shop.signals()
    assert (kind, paid) == ("payment_completed", ecommerce_id)
    assert int(pid) != os.getpid()

    again = tasks.sync.enqueue()
    shop.work()

    assert finished(again).return_value["transitions"]["completed"] == 0
    assert len(shop.signals()) == 1  # exactly one payment_completed


@with_worker
def test_sigterm_to_the_worker_stops_a_queued_run_between_payments(shop, athm_settings):
    """``db_worker`` runs the task in its main thread: SIGTERM (systemd's or docker's stop)
    stops the run between payments, the task succeeds with ``"stopped": "SIGTERM"``, and the
    worker still shuts down after it, as its own handler decided."""
    sandbox = athm_settings
    ids = [tracked_completed(sandbox) for _ in range(30)]
    sandbox.set_latency(0.1)
    result = tasks.sync.enqueue(workers=2)
    worker = shop.start()
    try:
        deadline = time.monotonic() + WORKER_TIMEOUT
        while len(shop.signals()) < 3:  # the run is sending its first signals
            assert worker.poll() is None and time.monotonic() < deadline, worker.communicate()
            time.sleep(0.005)
        worker.send_signal(signal.SIGTERM)
        out, err = worker.communicate(timeout=WORKER_TIMEOUT)
    finally:
        if worker.poll() is None:
            worker.kill()

    assert worker.returncode == 0, out + err
    result = finished(result)
    assert result.status == "SUCCESSFUL", result.errors
    summary = result.return_value
    assert summary["stopped"] == "SIGTERM" and summary["exit_code"] == 143
    assert 0 < summary["checked"] < len(ids)
    run = SyncRun.objects.get(pk=summary["sync_run_id"])
    assert run.finished_at is not None and run.exit_code == 143
    assert not Payment.objects.exclude(claimed_by="").exists()
    assert locks.current_holder(locks.RUN_LOCK) is None  # the run lock is free again

    sandbox.set_latency(0)
    again = tasks.sync.enqueue()
    shop.work()
    assert finished(again).return_value["exit_code"] == 0
    sent = sorted(paid for kind, paid, _ in shop.signals())
    assert sent == sorted(ids)  # each payment's signal once, across both runs


@with_worker
def test_the_payment_task_and_a_bad_id(shop, athm_settings):
    ecommerce_id = tracked_completed(athm_settings)
    good = tasks.sync_payment.enqueue(ecommerce_id)
    not_a_uuid = tasks.sync_payment.enqueue("not-a-uuid")
    unknown = tasks.sync_payment.enqueue(str(uuid.uuid4()))

    shop.work()

    assert finished(good).return_value == {
        "ecommerce_id": ecommerce_id,
        "status": "COMPLETED",
        "transitions": ["completed"],
        "signals_sent": 1,
        "receiver_errors": 0,
        "error": "",
    }
    for bad, message in ((not_a_uuid, "ecommerce_id must be a UUID"), (unknown, "no stored")):
        bad = finished(bad)
        assert bad.status == "FAILED"
        (error,) = bad.errors
        assert error.exception_class is ValueError
        assert message in error.traceback
    assert [line[:2] for line in shop.signals()] == [["payment_completed", ecommerce_id]]


@with_worker
def test_a_run_skips_at_once_while_another_holds_the_run_lock(shop, athm_settings):
    ecommerce_id = tracked_completed(athm_settings)
    other = locks.Lease(locks.RUN_LOCK, "other-host:4242:cafe")
    assert other.acquire()
    result = tasks.sync.enqueue()

    try:
        shop.work()
    finally:
        other.release()

    skipped = finished(result).return_value
    assert skipped["skipped"] is True and skipped["held_by"] == "other-host:4242:cafe"
    assert athm_settings.counts().get("findPayment", 0) == 0
    assert Payment.objects.get(pk=ecommerce_id).status == "OPEN"
    assert not SyncRun.objects.exists()
    assert shop.signals() == []


@with_worker
def test_bad_settings_in_the_worker_are_one_clear_failure(shop, athm_settings):
    tracked_completed(athm_settings)
    result = tasks.sync.enqueue()

    shop.work('ATHM_SYNC = {**ATHM_SYNC, "PUBLIC_TOKEN": ""}  # noqa: F405')

    result = finished(result)
    assert result.status == "FAILED"
    (error,) = result.errors
    assert error.exception_class.__name__ == "CannotRun"
    assert "bad ATHM_SYNC setting: ATHM_SYNC['PUBLIC_TOKEN'] is missing" in error.traceback
    assert athm_settings.counts().get("findPayment", 0) == 0
    assert not SyncRun.objects.exists()
    assert locks.current_holder(locks.RUN_LOCK) is None


# -- in process: the immediate backend -------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_the_immediate_backend_runs_both_tasks_in_the_caller(settings, athm_settings, received):
    settings.TASKS = IMMEDIATE_BACKEND
    ecommerce_id = tracked_completed(athm_settings)

    run = tasks.sync.enqueue(limit=10)

    assert run.status == "SUCCESSFUL"
    assert run.return_value["transitions"]["completed"] == 1
    assert [name for name, _, _ in received] == ["payment_completed"]
    athm_settings.refund(ecommerce_id, "2.50")
    one = tasks.sync_payment.enqueue(ecommerce_id)
    assert one.status == "SUCCESSFUL"
    assert one.return_value["transitions"] == ["refund_sent"]
    assert [name for name, _, _ in received] == ["payment_completed", "refund_sent"]


@pytest.mark.django_db(transaction=True)
def test_a_stale_run_lock_is_free_again_after_its_lease(settings, athm_settings, time_machine):
    """A run killed with SIGKILL leaves the lock taken; the next run after ``LOCK_LEASE``
    takes it over, and one before that skips."""
    settings.TASKS = IMMEDIATE_BACKEND
    tracked_completed(athm_settings)
    start = clock.now()
    time_machine.move_to(start, tick=False)
    assert locks.Lease(locks.RUN_LOCK, "dead-host:1:beef").acquire()  # and never released

    time_machine.move_to(start + locks.LOCK_LEASE - timedelta(seconds=1), tick=False)
    assert tasks.sync.enqueue().return_value["skipped"] is True
    time_machine.move_to(start + locks.LOCK_LEASE + timedelta(seconds=1), tick=False)
    ran = tasks.sync.enqueue().return_value

    assert ran["skipped"] is False and ran["transitions"]["completed"] == 1
    assert locks.current_holder(locks.RUN_LOCK) is None


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("kwargs", "message"),
    [({"limit": "10"}, "limit must be a whole number"), ({"workers": 0}, "--workers must be")],
)
def test_bad_arguments_fail_the_run_task_before_it_starts(settings, kwargs, message):
    settings.TASKS = IMMEDIATE_BACKEND

    result = tasks.sync.enqueue(**kwargs)

    assert result.status == "FAILED"
    (error,) = result.errors
    assert error.exception_class.__name__ == "CannotRun"
    assert message in error.traceback
    assert locks.current_holder(locks.RUN_LOCK) is None


def test_importing_it_without_a_tasks_framework_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "django.tasks", None)
    monkeypatch.setitem(sys.modules, "django_tasks", None)
    monkeypatch.delitem(sys.modules, "athm_sync.contrib.tasks", raising=False)

    with pytest.raises(ImportError, match=r'pip install "django-athm-sync\[tasks\]"'):
        importlib.import_module("athm_sync.contrib.tasks")
