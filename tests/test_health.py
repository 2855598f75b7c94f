"""``manage.py athm_sync --health``, as monitoring runs it: its exit status and its line."""

from __future__ import annotations

import json
import uuid
from datetime import timedelta
from decimal import Decimal

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from athm_sync import clock
from athm_sync.health import check_health, parse_duration
from athm_sync.models import Payment, PaymentEvent, SyncRun
from tests.commands import call, run_process
from tests.test_overlap import child_env

pytestmark = pytest.mark.django_db(transaction=True)


def health(*args: str) -> tuple[int, str, str]:
    return call("athm_sync", "--health", *args)


def test_no_run_yet_is_unhealthy(athm_settings):
    code, out, err = health()
    assert (code, out) == (1, "")
    assert err.strip() == (
        "athm_sync: unhealthy: no run has finished successfully yet; "
        "0 payment(s) given up and 0 held in the last 10 min"
    )


def test_a_recent_successful_run_is_healthy_and_an_old_one_is_not(athm_settings, time_machine):
    assert call("athm_sync")[0] == 0

    code, out, _ = health()
    assert code == 0 and out.startswith("athm_sync: healthy: the last successful run finished")

    time_machine.move_to(clock.now() + timedelta(minutes=11), tick=False)
    code, _, err = health()
    assert code == 1 and "finished 11 min ago, more than 10 min" in err
    assert health("--max-age", "15m")[0] == 0


def test_a_failing_latest_run_is_named(athm_settings, time_machine):
    assert call("athm_sync")[0] == 0
    time_machine.move_to(clock.now() + timedelta(minutes=30), tick=False)
    Payment.objects.track(uuid.uuid4(), total="5.00")
    athm_settings.inject_fault("http503", "findPayment", times=10)
    assert call("athm_sync")[0] == 1

    code, _, err = health()

    assert (
        code == 1 and "the latest run ended with exit 1, 1 error(s): ATH Móvil findPayment" in err
    )


def test_given_up_and_held_payments_are_reported(athm_settings):
    Payment.objects.create(ecommerce_id=uuid.uuid4(), total=Decimal("5"), given_up_at=clock.now())
    held = Payment.objects.create(
        ecommerce_id=uuid.uuid4(), total=Decimal("5"), status="MISMATCHED"
    )
    PaymentEvent.objects.create(payment=held, kind="mismatched", dispatched_at=clock.now())
    SyncRun.objects.create(finished_at=clock.now(), exit_code=0)

    code, out, _ = call("athm_sync", "--health", "--json")

    document = json.loads(out)
    assert code == 0 and document["healthy"] is True
    assert (document["given_up"], document["held"], document["max_age_seconds"]) == (1, 1, 600)
    assert "1 payment(s) given up and 1 held in the last 10 min" in document["reason"]


def test_health_costs_a_few_queries_however_many_runs(athm_settings):
    SyncRun.objects.bulk_create([SyncRun(finished_at=clock.now(), exit_code=0) for _ in range(200)])
    with CaptureQueriesContext(connection) as context:
        assert check_health().healthy
    # the latest run (the success), the payments (given up, failing), held, receivers, the
    # refund scan
    assert len(context.captured_queries) == 5


@pytest.mark.parametrize("text", ["ten minutes", "0", "-5m", "5w", ""])
def test_a_bad_max_age_is_one_line_and_exit_2(athm_settings, text):
    code, out, err = health(f"--max-age={text}")
    assert code == 2 and out == "" and "--max-age must be a duration like" in err


def test_max_age_without_health_is_refused(athm_settings):
    code, _, err = call("athm_sync", "--max-age", "10m")
    assert code == 2 and "--max-age only goes with --health" in err


@pytest.mark.parametrize(
    ("text", "seconds"), [("90s", 90), ("10m", 600), ("2h", 7200), ("1d", 86400), ("45", 45)]
)
def test_durations(text, seconds):
    assert parse_duration(text) == timedelta(seconds=seconds)


def test_health_as_a_real_process_for_cron_and_systemd(sandbox, tmp_path):
    SyncRun.objects.create(finished_at=clock.now(), exit_code=0)
    env = child_env(sandbox, tmp_path / "signals.log")

    healthy = run_process("athm_sync", "--health", env=env)

    assert healthy.returncode == 0, healthy.stderr
    assert healthy.stdout.startswith("athm_sync: healthy:") and healthy.stdout.count("\n") == 1


def test_a_database_that_is_not_migrated_is_one_line_and_exit_2(athm_settings, tmp_path):
    """The default SQLite file of tests/settings.py is never migrated: as a new project's."""
    for args in (["--health"], []):
        result = run_process("athm_sync", *args)
        assert result.returncode == 2, result.stderr
        assert result.stderr.startswith("athm_sync: error: the database cannot be used: ")
        assert "migrate" in result.stderr and result.stderr.count("\n") == 1
        assert "Traceback" not in result.stderr


def test_health_needs_only_the_database_not_the_tokens(sandbox, tmp_path):
    """It reads the run history: a host that runs only the health check needs no tokens."""
    SyncRun.objects.create(finished_at=clock.now(), exit_code=0)
    (tmp_path / "no_tokens.py").write_text(
        "from tests.settings import *  # noqa: F403\n"
        'ATHM_SYNC = {**ATHM_SYNC, "PUBLIC_TOKEN": "", "PRIVATE_TOKEN": ""}  # noqa: F405\n'
    )
    env = child_env(sandbox, tmp_path / "signals.log")
    env["DJANGO_SETTINGS_MODULE"] = "no_tokens"
    env["PYTHONPATH"] = f"{tmp_path}:{env['PYTHONPATH']}"

    healthy = run_process("athm_sync", "--health", env=env)
    as_json = run_process("athm_sync", "--health", "--json", env=env)
    a_run = run_process("athm_sync", env=env)

    assert healthy.returncode == 0, healthy.stderr
    assert healthy.stdout.startswith("athm_sync: healthy: the last successful run finished")
    assert as_json.returncode == 0 and json.loads(as_json.stdout)["exit_code"] == 0
    assert a_run.returncode == 2 and "PUBLIC_TOKEN" in a_run.stderr  # a run does need them


def test_a_run_that_failed_after_a_success_is_unhealthy(athm_settings):
    """A success five minutes ago does not hide the failures since (a run stopped by SIGTERM
    counts neither way)."""
    SyncRun.objects.create(finished_at=clock.now() - timedelta(minutes=5), exit_code=0)
    SyncRun.objects.create(
        finished_at=clock.now(),
        exit_code=1,
        errors=[{"ecommerce_id": "", "reason": "refund scan: ... failed", "kind": "report_failed"}],
    )

    code, out, err = health()
    _, document, _ = health("--json")

    assert (code, out) == (1, "")
    assert err.startswith(
        "athm_sync: unhealthy: the latest run ended with exit 1, 1 error(s): refund scan"
    )
    document = json.loads(document)
    assert [problem["kind"] for problem in document["problems"]] == ["latest_run_failed"]
    assert document["latest_run_exit_code"] == 1 and document["exit_code"] == 1
    assert document["last_success"] is not None
    # A run that then succeeds is the latest word; one stopped by a signal is no word at all.
    SyncRun.objects.create(finished_at=clock.now(), exit_code=0)
    SyncRun.objects.create(finished_at=clock.now(), exit_code=143)  # systemctl stop
    assert health()[0] == 0


def test_an_open_payment_whose_last_check_failed_is_unhealthy_until_checked(athm_settings):
    SyncRun.objects.create(finished_at=clock.now(), exit_code=0)
    payment = Payment.objects.track(uuid.uuid4(), total="5.00")
    Payment.objects.filter(pk=payment.pk).update(failures=2, last_error="ATH Móvil: 503")
    Payment.objects.create(  # given up: a person's business (counted), not the sync's
        ecommerce_id=uuid.uuid4(), total=Decimal("5"), failures=3, given_up_at=clock.now()
    )

    code, _, err = health()
    assert code == 1 and "1 open payment(s) could not be checked at their last try" in err

    Payment.objects.filter(pk=payment.pk).update(failures=0)
    assert health()[0] == 0


def test_every_problem_and_error_kind_is_documented():
    """docs/operations.md lists what each kind means: a monitor's author reads it there."""
    from pathlib import Path

    from athm_sync.health import ProblemKind
    from athm_sync.runner import ErrorKind

    page = (Path(__file__).resolve().parent.parent / "docs" / "operations.md").read_text()
    for holder in (ProblemKind, ErrorKind):
        for name, kind in vars(holder).items():
            if not name.startswith("_"):
                assert f"`{kind}`" in page, kind
