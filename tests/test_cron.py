"""django-crontab for real: ``manage.py crontab add``, the installed line, ``crontab run``.

Needs the ``crontab`` binary (Debian's ``cron`` package; ``.ci/run`` installs it). The user's
crontab is saved before and restored exactly afterwards.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import subprocess
import sys
import uuid
from decimal import Decimal

import pytest

from athm_sync import cron
from athm_sync.models import Payment, SyncRun
from tests.commands import run_process
from tests.test_overlap import child_env

pytestmark = pytest.mark.django_db(transaction=True)

CRONTAB = shutil.which("crontab")


@pytest.fixture
def saved_crontab():
    """The current user's crontab, put back as it was after the test."""
    before = subprocess.run([CRONTAB, "-l"], capture_output=True, text=True, check=False)  # noqa: S603
    yield
    if before.returncode == 0:
        subprocess.run([CRONTAB, "-"], input=before.stdout, text=True, check=True)  # noqa: S603
    else:
        subprocess.run([CRONTAB, "-r"], capture_output=True, check=False)  # noqa: S603


def django(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return run_process(*args, env=env, timeout=120)


@pytest.mark.skipif(
    CRONTAB is None and not os.environ.get("ATHM_TEST_REQUIRE_CRON"),
    reason="needs the crontab binary (apt-get install cron)",
)
def test_django_crontab_installs_runs_and_removes_the_job(sandbox, tmp_path, saved_crontab):
    comment = f"athm-sync-test-{uuid.uuid4().hex[:8]}"
    log = tmp_path / "athm_sync.log"
    (tmp_path / "manage.py").write_text("# django-crontab only checks that it exists\n")
    (tmp_path / "cron_settings.py").write_text(
        "from tests.settings import *  # noqa: F403\n"
        'INSTALLED_APPS = [*INSTALLED_APPS, "django_crontab"]  # noqa: F405\n'
        f"CRONJOBS = [('* * * * *', 'athm_sync.cron.sync', [], {{}}, '>> {log} 2>&1')]\n"
        "CRONTAB_LOCK_JOBS = True\n"
        f"CRONTAB_COMMENT = {comment!r}\n"
        f"CRONTAB_DJANGO_MANAGE_PATH = {str(tmp_path / 'manage.py')!r}\n"
        "CRONTAB_DJANGO_SETTINGS_MODULE = 'cron_settings'\n"
    )
    env = child_env(sandbox, tmp_path / "signals.log")
    env["DJANGO_SETTINGS_MODULE"] = "cron_settings"
    env["PYTHONPATH"] = os.pathsep.join([str(tmp_path), env["PYTHONPATH"]])
    ecommerce_id, _ = sandbox.create_payment("5.00")
    sandbox.complete(ecommerce_id)
    Payment.objects.track(ecommerce_id, total=Decimal("5.00"))

    added = django(env, "crontab", "add")

    assert added.returncode == 0, added.stderr
    installed = subprocess.run([CRONTAB, "-l"], capture_output=True, text=True, check=True)  # noqa: S603
    (line,) = [line for line in installed.stdout.splitlines() if line.endswith(comment)]
    assert line.startswith("* * * * * ")
    assert f"{sys.executable} {tmp_path / 'manage.py'} crontab run " in line
    assert "--settings=cron_settings" in line and f">> {log} 2>&1" in line
    job_hash = re.search(r"crontab run (\w+)", line).group(1)

    ran = django(env, "crontab", "run", job_hash)

    assert ran.returncode == 0, ran.stderr
    assert Payment.objects.get().status == "COMPLETED"
    assert SyncRun.objects.get().exit_code == 0
    removed = django(env, "crontab", "remove")
    assert removed.returncode == 0, removed.stderr
    after = subprocess.run([CRONTAB, "-l"], capture_output=True, text=True, check=False)  # noqa: S603
    assert comment not in after.stdout


def test_the_cron_job_logs_a_failing_run_instead_of_raising(athm_settings, caplog):
    Payment.objects.track(uuid.uuid4(), total=Decimal("5.00"))
    athm_settings.inject_fault("http503", "findPayment", times=10)

    with caplog.at_level(logging.ERROR, logger="athm_sync.cron"):
        code = cron.sync()

    assert code == 1
    assert "athm_sync exited 1" in caplog.text and "--health" in caplog.text
    assert SyncRun.objects.get().exit_code == 1
