"""``athm_sync.contrib.celery`` with a real Celery worker process and the Redis on 127.0.0.1.

The worker is ``celery -A athm_celery_app worker`` in a throwaway project written to a temporary
folder: its settings are the suite's (``tests.settings``) on this test's own database (the
SQLite test file, or the PostgreSQL test database when ``DATABASE_URL`` is set), its ATH Móvil
is the session's sandbox, and the ``tests.signal_log`` app appends one line per signal it sends
to a file this process reads. Broker and result backend are Redis database 13 (flushed before
and after, and only that one), on a queue of this run's own. Skipped when Redis does not answer.
"""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from athm_sync import locks
from athm_sync.models import Payment, SyncRun
from athm_sync.runner import CannotRun
from athm_sync.sandbox import SandboxServer
from tests.commands import run_python
from tests.test_overlap import child_env

REDIS_URL = os.environ.get("ATHM_TEST_REDIS_URL", "redis://127.0.0.1:6379/13")
RESULT_TIMEOUT = 60
QUEUE = f"athm-sync-tests-{uuid.uuid4().hex[:8]}"

APP = """\
import os

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "athm_celery_settings")

from celery import Celery

app = Celery("athm_sync_test_shop")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks(["athm_sync.contrib"], related_name="celery")
"""

SETTINGS = """\
from tests.settings import *  # noqa: F403

CELERY_BROKER_URL = {redis!r}
CELERY_RESULT_BACKEND = {redis!r}
CELERY_TASK_DEFAULT_QUEUE = {queue!r}
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
"""


def redis_or_skip() -> Any:
    """A client of the test Redis database; skips the test when Redis does not answer, unless
    ``ATHM_TEST_REQUIRE_REDIS`` is set (``.ci/run`` sets it: there, no Redis is a failure)."""
    redis = pytest.importorskip("redis", reason="needs redis-py (the celery extra's redis)")
    client = redis.Redis.from_url(REDIS_URL, socket_connect_timeout=1, socket_timeout=5)
    try:
        client.ping()
    except redis.RedisError as error:
        if os.environ.get("ATHM_TEST_REQUIRE_REDIS"):
            raise
        pytest.skip(f"needs Redis on {REDIS_URL} for a real Celery worker: {error}")
    return client


@pytest.fixture(scope="module")
def redis_db() -> Iterator[Any]:
    """The test Redis database, empty; emptied again afterwards."""
    pytest.importorskip("celery", reason='needs Celery (pip install "django-athm-sync[celery]")')
    client = redis_or_skip()
    client.flushdb()
    try:
        yield client
    finally:
        client.flushdb()
        client.close()


class Worker:
    """A real ``celery worker`` process; its output goes to ``log``, read on failure."""

    def __init__(self, folder: Path, env: dict[str, str]) -> None:
        self.log = folder / "worker.log"
        self._out = self.log.open("wb")
        self.process = subprocess.Popen(  # noqa: S603 - our own interpreter and arguments
            [
                sys.executable,
                "-m",
                "celery",
                "-A",
                "athm_celery_app",
                "worker",
                "--pool",
                "prefork",
                "--concurrency",
                "1",
                "--queues",
                QUEUE,
                "--without-gossip",
                "--without-mingle",
                "--without-heartbeat",
                "--loglevel",
                "INFO",
            ],
            cwd=folder,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=self._out,
            stderr=subprocess.STDOUT,
        )

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def stop(self) -> None:
        """Warm shutdown (SIGTERM), then SIGKILL if it does not end in time."""
        try:
            if self.process.poll() is None:
                self.process.terminate()
                try:
                    self.process.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    self.process.kill()
                    self.process.wait(timeout=10)
        finally:
            self._out.close()


@pytest.fixture(scope="module")
def celery_project(
    tmp_path_factory: pytest.TempPathFactory,
    redis_db: Any,
    sandbox_server: SandboxServer,
    django_db_setup: Any,
) -> Iterator[tuple[Any, Worker, Path]]:
    """The throwaway project, its running worker and this process's client Celery app on the
    same broker; yields ``(app, worker, signal_log)``."""
    from celery import Celery

    folder = tmp_path_factory.mktemp("celery-shop")
    (folder / "athm_celery_app.py").write_text(APP)
    (folder / "athm_celery_settings.py").write_text(SETTINGS.format(redis=REDIS_URL, queue=QUEUE))
    signal_log = folder / "signals.log"
    env = child_env(sandbox_server, signal_log)
    env["DJANGO_SETTINGS_MODULE"] = "athm_celery_settings"
    env["PYTHONPATH"] = os.pathsep.join([str(folder), env["PYTHONPATH"]])
    app = Celery("athm-sync-tests", broker=REDIS_URL, backend=REDIS_URL, set_as_current=True)
    app.conf.task_default_queue = QUEUE
    app.conf.broker_connection_retry_on_startup = True
    worker = Worker(folder, env)
    try:
        yield app, worker, signal_log
    finally:
        worker.stop()
        app.close()


@pytest.fixture
def celery(celery_project, athm_settings):
    """Per test: an empty signal log, the sandbox reset, the run lock free."""
    app, worker, signal_log = celery_project
    signal_log.write_text("")
    yield app, worker, signal_log


def result_of(worker: Worker, async_result: Any) -> Any:
    """The task's return value; the worker's log when it did not come in time."""
    from celery.exceptions import TimeoutError as ResultTimeout

    try:
        return async_result.get(timeout=RESULT_TIMEOUT)
    except ResultTimeout:
        pytest.fail(f"no result within {RESULT_TIMEOUT} s; the worker said:\n{worker.output()}")


def signal_lines(signal_log: Path) -> list[list[str]]:
    return [line.split() for line in signal_log.read_text().splitlines()]


def tracked_completed(sandbox: SandboxServer) -> str:
    ecommerce_id, _ = sandbox.create_payment(total="12.50")
    sandbox.complete(ecommerce_id)
    Payment.objects.track(ecommerce_id, total=Decimal("12.50"))
    return ecommerce_id


# The worker and this process share the database: what one commits, the other sees.
with_worker = pytest.mark.django_db(transaction=True)


@with_worker
def test_a_queued_run_completes_a_paid_payment_once(celery, athm_settings):
    app, worker, signal_log = celery
    from athm_sync.contrib.celery import sync

    ecommerce_id = tracked_completed(athm_settings)

    summary = result_of(worker, sync.delay())

    assert summary["skipped"] is False
    assert summary["exit_code"] == 0
    assert summary["transitions"]["completed"] == 1
    assert Payment.objects.get(pk=ecommerce_id).status == "COMPLETED"
    assert SyncRun.objects.get(pk=summary["sync_run_id"]).exit_code == 0
    ((kind, paid, pid),) = signal_lines(signal_log)
    assert (kind, paid) == ("payment_completed", ecommerce_id)
    assert int(pid) != os.getpid()  # sent by the worker, not by this process

    again = result_of(worker, app.send_task("athm_sync.sync"))

    assert again["transitions"]["completed"] == 0
    assert len(signal_lines(signal_log)) == 1  # exactly one payment_completed


@with_worker
def test_the_payment_task_checks_one_payment_now(celery, athm_settings):
    app, worker, signal_log = celery
    ecommerce_id = tracked_completed(athm_settings)

    outcome = result_of(worker, app.send_task("athm_sync.sync_payment", args=[ecommerce_id]))

    assert outcome == {
        "ecommerce_id": ecommerce_id,
        "status": "COMPLETED",
        "transitions": ["completed"],
        "signals_sent": 1,
        "receiver_errors": 0,
        "error": "",
    }
    assert [line[:2] for line in signal_lines(signal_log)] == [["payment_completed", ecommerce_id]]
    assert not SyncRun.objects.exists()  # one payment, not a run


@with_worker
@pytest.mark.parametrize(
    ("given", "message"),
    [("not-a-uuid", "ecommerce_id must be a UUID"), (None, "no stored payment")],
)
def test_the_payment_task_fails_clearly_for_a_bad_id(celery, athm_settings, given, message):
    app, worker, _ = celery
    given = given or str(uuid.uuid4())

    async_result = app.send_task("athm_sync.sync_payment", args=[given])

    with pytest.raises(ValueError, match=message):
        result_of(worker, async_result)
    assert async_result.state == "FAILURE"
    assert athm_settings.counts().get("findPayment", 0) == 0


@with_worker
def test_a_run_skips_at_once_while_another_holds_the_run_lock(celery, athm_settings):
    app, worker, signal_log = celery
    ecommerce_id = tracked_completed(athm_settings)
    other = locks.Lease(locks.RUN_LOCK, "other-host:4242:cafe")
    assert other.acquire()
    athm_settings.reset_counts()

    try:
        skipped = result_of(worker, app.send_task("athm_sync.sync"))
    finally:
        other.release()

    assert skipped["skipped"] is True
    assert skipped["held_by"] == "other-host:4242:cafe"
    assert "another athm_sync run" in skipped["reason"]
    assert athm_settings.counts().get("findPayment", 0) == 0  # ATH Móvil was not asked
    assert Payment.objects.get(pk=ecommerce_id).status == "OPEN"
    assert not SyncRun.objects.exists()
    assert signal_lines(signal_log) == []

    ran = result_of(worker, app.send_task("athm_sync.sync"))  # the lock is free again

    assert ran["skipped"] is False and ran["transitions"]["completed"] == 1
    assert locks.current_holder(locks.RUN_LOCK) is None  # the run freed it


@with_worker
def test_rejected_credentials_are_one_clear_failure_not_retried(celery, athm_settings):
    app, worker, signal_log = celery
    tracked_completed(athm_settings)
    athm_settings.inject_fault("auth", "findPayment", times=100)

    async_result = app.send_task("athm_sync.sync")

    with pytest.raises(CannotRun, match="ATH Móvil rejected the credentials"):
        result_of(worker, async_result)
    assert async_result.state == "FAILURE"
    assert SyncRun.objects.get().exit_code == 2  # ran once: no retries
    assert locks.current_holder(locks.RUN_LOCK) is None
    assert signal_lines(signal_log) == []


# -- without a worker --------------------------------------------------------------------------


def test_beat_schedule_runs_the_sync_task_every_minute_and_drops_stale_ticks():
    pytest.importorskip("celery", reason='needs Celery (pip install "django-athm-sync[celery]")')
    from athm_sync.contrib.celery import BEAT_SCHEDULE

    (entry,) = BEAT_SCHEDULE.values()
    assert entry["task"] == "athm_sync.sync"
    assert entry["schedule"] == 60.0
    assert entry["options"]["expires"] < entry["schedule"]


def test_importing_it_without_celery_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "celery", None)  # import celery now fails
    monkeypatch.delitem(sys.modules, "athm_sync.contrib.celery", raising=False)

    with pytest.raises(ImportError, match=r'pip install "django-athm-sync\[celery\]"'):
        importlib.import_module("athm_sync.contrib.celery")


def test_the_core_app_never_imports_contrib(tmp_path):
    """Every module of the app but ``contrib`` imported in a fresh interpreter loads nothing
    of ``athm_sync.contrib`` (nor Celery, nor a tasks framework)."""
    script = """
import importlib, pathlib, sys, django
django.setup()
import athm_sync
root = pathlib.Path(athm_sync.__file__).parent
for path in sorted(root.rglob("*.py")):
    parts = path.relative_to(root.parent).with_suffix("").parts
    if "contrib" in parts or parts[-1] == "__main__":
        continue
    importlib.import_module(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
prefixes = ("athm_sync.contrib", "celery", "django_tasks", "django.tasks")
print(sorted(name for name in sys.modules if name.startswith(prefixes)))
"""
    done = run_python(script, {**os.environ, "DJANGO_SETTINGS_MODULE": "tests.settings"})

    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_the_shops_celery_module_may_import_it_before_django_is_set_up():
    """A project's ``celery.py`` is imported with the project package, before Django's apps
    are ready (often before settings are even configured): importing the beat schedule there
    must not touch the app's models."""
    pytest.importorskip("celery", reason='needs Celery (pip install "django-athm-sync[celery]")')
    script = (
        "import sys\n"
        "from athm_sync.contrib.celery import BEAT_SCHEDULE, sync\n"
        "assert sync.name == 'athm_sync.sync'\n"
        "print(sorted(name for name in sys.modules if name.startswith('athm_sync.')))\n"
    )
    env = {key: value for key, value in os.environ.items() if key != "DJANGO_SETTINGS_MODULE"}
    done = run_python(script, env)

    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "['athm_sync.contrib', 'athm_sync.contrib.celery']"
