"""``manage.py athm_sync`` end to end against the sandbox: output, options, exit codes, queries."""

from __future__ import annotations

import io
import json
import subprocess
import uuid
from datetime import timedelta
from decimal import Decimal

import pytest
import time_machine
from django.db import connection
from django.test.utils import CaptureQueriesContext

from athm_sync import bulk_checks, clock, reconcile, sending, signals
from athm_sync.models import Payment, PaymentEvent, Refund, ReportScan, SyncRun
from tests import commands
from tests.commands import call
from tests.test_overlap import track_completed

S = Payment.Status
JSON_KEYS = {
    "checked",
    "unchanged",
    "transitions",
    "mismatched",
    "captured",
    "given_up",
    "signals_sent",
    "receiver_errors",
    "redispatched",
    "receivers",
    "webhooks",
    "refund_scan",
    "backfill",
    "pruned",
    "errors",
    "error_count",
    "error_kinds",
    "duration_seconds",
    "dry_run",
    "exit_code",
    "stopped",
    "error",
}


class TTY(io.StringIO):
    """A stderr that says it is a terminal, to see the progress bar."""

    def isatty(self) -> bool:
        return True


def run(*args: str, stderr: io.StringIO | None = None) -> tuple[int, str, str]:
    """Run the command in this process; returns (exit code, stdout, stderr)."""
    return call("athm_sync", *args, stderr=stderr)


def run_json(*args: str) -> tuple[int, dict, str]:
    code, out, err = run("--json", *args)
    document = json.loads(out)  # the one and only thing on stdout
    assert set(document) == JSON_KEYS
    assert document["exit_code"] == code
    return code, document, err


def track(sandbox, total: str = "12.50", metadata: str = "", age: float = 0) -> Payment:
    """A payment created at the sandbox and tracked locally, due now; ``age`` seconds old."""
    ecommerce_id, auth_token = sandbox.create_payment(total, metadata1=metadata)
    return Payment.objects.track(
        ecommerce_id,
        total=total,
        metadata_1=metadata,
        auth_token=auth_token,
        created_at=clock.now() - timedelta(seconds=age),
    )


@pytest.fixture
def received():
    """Every signal sent during the test, as (signal name, ecommerce id, extra)."""
    log: list[tuple[str, str, str]] = []

    def make(name: str):
        def receiver(sender, payment, refund=None, **kwargs):
            log.append((name, str(payment.pk), str(refund.amount) if refund else ""))

        return receiver

    receivers = {
        signals.payment_completed: make("payment_completed"),
        signals.payment_cancelled: make("payment_cancelled"),
        signals.payment_expired: make("payment_expired"),
        signals.refund_sent: make("refund_sent"),
    }
    for signal, receiver in receivers.items():
        signal.connect(receiver, weak=False)
    yield log
    for signal, receiver in receivers.items():
        signal.disconnect(receiver)


@pytest.fixture
def story(athm_settings):
    """Five due payments: completed, confirmed (to capture), cancelled, expired, still open."""
    sandbox = athm_settings
    completed = track(sandbox, "12.50", "order-1")
    sandbox.complete(str(completed.pk), name="Ana")
    confirmed = track(sandbox, "20.00", "order-2")
    sandbox.confirm(str(confirmed.pk))
    cancelled = track(sandbox, "5.00", "order-3")
    sandbox.cancel(str(cancelled.pk))
    # Locally created 700 s ago: its 600 s deadline has passed, so CANCEL means EXPIRED.
    expired = track(sandbox, "7.25", "order-4", age=700)
    sandbox.expire(str(expired.pk))
    still_open = track(sandbox, "9.99", "order-5")
    return {
        "completed": completed,
        "confirmed": confirmed,
        "cancelled": cancelled,
        "expired": expired,
        "open": still_open,
    }


STORY_TRANSITIONS = {
    "completed": 2,
    "cancelled": 1,
    "expired": 1,
    "refund_sent": 0,
    "mismatched": 0,
}


def snapshot_db() -> dict:
    return {
        "counts": [model.objects.count() for model in (Payment, Refund, PaymentEvent, SyncRun)],
        "payments": sorted(
            Payment.objects.values_list(
                "pk", "status", "updated_at", "check_count", "next_check_at", "claimed_by"
            )
        ),
    }


# --- a normal run -------------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_a_run_applies_every_transition_and_prints_a_summary(story, received):
    code, out, err = run()
    assert code == 0, err
    statuses = {name: Payment.objects.get(pk=p.pk).status for name, p in story.items()}
    assert statuses == {
        "completed": S.COMPLETED,
        "confirmed": S.COMPLETED,
        "cancelled": S.CANCEL,
        "expired": S.EXPIRED,
        "open": S.OPEN,
    }
    assert sorted(name for name, _, _ in received) == [
        "payment_cancelled",
        "payment_completed",
        "payment_completed",
        "payment_expired",
    ]
    assert "checked 5 payment(s)" in out
    assert "unchanged: 1" in out
    assert "completed: 2, cancelled: 1, expired: 1, refunds: 0" in out
    assert "captured: 1" in out
    assert "signals sent: 4" in out
    assert "errors: 0" in out
    assert err == ""  # stderr is not a terminal: no progress bar


@pytest.mark.django_db(transaction=True)
def test_json_summary_is_the_only_thing_on_stdout(story, received):
    code, document, _ = run_json()
    assert code == 0
    assert document["duration_seconds"] >= 0
    document.pop("duration_seconds")
    scan = document.pop("refund_scan")  # the first run reads the report for refunds
    assert (scan["rows"], scan["refunds"], scan["checked"]) == (2, 0, 0)
    assert document == {
        "checked": 5,
        "unchanged": 1,
        "transitions": STORY_TRANSITIONS,
        "mismatched": 0,
        "captured": 1,
        "given_up": 0,
        "signals_sent": 4,
        "receiver_errors": 0,
        "redispatched": 0,
        "receivers": {
            "retried": 0,
            "delivered": 0,
            "given_up": 0,
            "failing": 0,
            "failing_since": None,
            "given_up_unacknowledged": 0,
        },
        "webhooks": {"applied": 0, "unchanged": 0, "rejected": 0, "ignored": 0, "pending": 0},
        "backfill": None,
        "pruned": {"webhook_events": 0, "payment_events": 0, "sync_runs": 0},
        "errors": [],
        "error_count": 0,
        "error_kinds": {},
        "dry_run": False,
        "exit_code": 0,
        "stopped": None,
        "error": None,
    }
    assert len(received) == 4


@pytest.mark.django_db(transaction=True)
def test_a_second_run_changes_nothing_and_sends_nothing(story, received):
    assert run()[0] == 0
    story["open"].refresh_from_db()
    Payment.objects.filter(pk=story["open"].pk).update(next_check_at=clock.now())
    code, document, _ = run_json()
    assert code == 0
    assert document["checked"] == 1 and document["unchanged"] == 1
    assert document["signals_sent"] == 0
    assert len(received) == 4


@pytest.mark.django_db(transaction=True)
def test_verbosity_2_prints_one_line_per_changed_payment(story, received):
    code, out, _ = run("-v", "2")
    assert code == 0
    lines = [line for line in out.splitlines() if "(signal " in line]
    assert len(lines) == 4
    completed = story["completed"].pk
    assert f"COMPLETED  {completed}  $12.50  order-1 (signal payment_completed)" in lines
    assert any(line.startswith("CANCELLED") and "payment_cancelled" in line for line in lines)
    assert any(line.startswith("EXPIRED") and "payment_expired" in line for line in lines)
    assert str(story["open"].pk) not in out


@pytest.mark.django_db(transaction=True)
def test_verbosity_2_with_json_keeps_stdout_pure(story):
    code, document, _ = run_json("-v", "2")
    assert code == 0 and document["checked"] == 5


@pytest.mark.django_db(transaction=True)
def test_a_run_is_recorded(story):
    assert run_json()[0] == 0
    sync_run = SyncRun.objects.get()
    assert sync_run.finished_at is not None and sync_run.finished_at >= sync_run.started_at
    assert sync_run.pid and sync_run.host
    assert sync_run.options["dry_run"] is False
    assert (sync_run.checked, sync_run.unchanged) == (5, 1)
    assert sync_run.transitions == STORY_TRANSITIONS
    assert sync_run.signals_sent == 4
    assert sync_run.errors == [] and sync_run.exit_code == 0
    assert not Payment.objects.exclude(claimed_by="").exists()


@pytest.mark.django_db(transaction=True)
def test_progress_bar_only_on_a_terminal(story):
    tty = TTY()
    code, _, err = run(stderr=tty)
    assert code == 0
    assert "\r[" in err and "5/5" in err
    _, _, err = run("--json", stderr=TTY())
    assert err == ""


@pytest.mark.django_db(transaction=True)
def test_the_progress_bar_is_not_drawn_in_the_error_colour(story):
    """As on a colour terminal, where Django writes everything on stderr in red."""
    from athm_sync.management.commands.athm_sync import Command

    tty = TTY()
    command = Command(stdout=io.StringIO(), stderr=tty, force_color=True)
    command.stderr.write("an error")
    assert "\x1b[" in tty.getvalue()  # the colour is on for errors...
    tty.seek(0)
    tty.truncate()
    command._progress(3, 5)
    bar = tty.getvalue()
    assert "\r[" in bar and "3/5" in bar
    assert "\x1b[" not in bar  # ...but the bar is not an error


@pytest.mark.django_db(transaction=True)
def test_an_unknown_setting_is_warned_about_in_one_line(athm_settings, settings):
    settings.ATHM_SYNC = {**settings.ATHM_SYNC, "WORKER": 8}
    code, _, err = run()
    assert code == 0
    assert err.strip() == (
        "athm_sync: warning: ATHM_SYNC has unknown keys, ignored: WORKER (a typo?)"
    )


@pytest.mark.django_db(transaction=True)
def test_a_receiver_that_raises_is_counted(story):
    def broken(sender, payment, **kwargs):
        raise RuntimeError("shop bug")

    signals.payment_completed.connect(broken, weak=False)
    try:
        code, document, _ = run_json()
    finally:
        signals.payment_completed.disconnect(broken)
    assert code == 1  # the transitions stand, but the shop's receiver did not do its part
    assert document["signals_sent"] == 4
    assert document["receiver_errors"] == 2
    assert Payment.objects.get(pk=story["completed"].pk).status == S.COMPLETED


@pytest.mark.django_db(transaction=True)
def test_events_left_unsent_are_sent_first(athm_settings, received):
    payment = track(athm_settings)
    Payment.objects.filter(pk=payment.pk).update(status=S.COMPLETED, auth_token="")
    PaymentEvent.objects.create(  # a crash's leftover: committed a minute ago, never sent
        payment=payment,
        kind=PaymentEvent.Kind.COMPLETED,
        from_status="OPEN",
        to_status="COMPLETED",
        created_at=clock.now() - timedelta(minutes=1),
    )
    code, document, _ = run_json()
    assert code == 0
    assert document["redispatched"] == 1 and document["signals_sent"] == 1
    assert received == [("payment_completed", str(payment.pk), "")]


# --- dry run ------------------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_dry_run_reports_what_would_change_and_changes_nothing(story, received):
    before = snapshot_db()
    code, document, _ = run_json("--dry-run")
    assert code == 0
    assert document["dry_run"] is True
    assert document["checked"] == 5
    assert document["unchanged"] == 1
    # The confirmed payment is reported as the capture the real run would make; none is made.
    assert document["transitions"] == STORY_TRANSITIONS
    assert document["captured"] == 1
    assert document["signals_sent"] == 0
    assert snapshot_db() == before
    assert received == []


@pytest.mark.django_db(transaction=True)
def test_dry_run_makes_no_capture_call_and_prints_would_send(athm_settings, story, received):
    athm_settings.reset_counts()
    code, out, _ = run("--dry-run", "-v", "2")
    assert code == 0
    assert athm_settings.counts()["authorization"] == 0
    assert athm_settings.counts()["findPayment"] == 5
    assert "(would send payment_completed)" in out
    assert "dry run, nothing written" in out
    assert "would capture: 1" in out
    assert received == []
    assert not SyncRun.objects.exists()


@pytest.mark.django_db(transaction=True)
def test_dry_run_of_a_given_payment_reports_its_refund(athm_settings, received):
    payment = track(athm_settings, "30.00")
    athm_settings.complete(str(payment.pk))
    assert run()[0] == 0
    athm_settings.refund(str(payment.pk), "10.00")
    before = snapshot_db()
    code, document, _ = run_json("--dry-run", "--ecommerce-id", str(payment.pk))
    assert code == 0
    assert document["transitions"]["refund_sent"] == 1
    assert snapshot_db() == before


# --- options -----------------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_limit_checks_at_most_n_payments(athm_settings):
    payments = [track(athm_settings) for _ in range(5)]
    code, document, _ = run_json("--limit", "2")
    assert code == 0
    assert document["checked"] == 2
    assert Payment.objects.filter(check_count=1).count() == 2
    assert Payment.objects.due().count() == 3
    code, document, _ = run_json()
    assert document["checked"] == 3
    assert all(Payment.objects.get(pk=p.pk).check_count == 1 for p in payments)


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("workers", ["1", "3"])
def test_workers_do_not_change_the_result(story, received, workers):
    code, document, _ = run_json("--workers", workers)
    assert code == 0
    assert (document["checked"], document["unchanged"]) == (5, 1)
    assert document["transitions"] == STORY_TRANSITIONS
    assert document["signals_sent"] == 4 and len(received) == 4


@pytest.mark.django_db(transaction=True)
def test_many_payments_in_several_batches(athm_settings, received):
    payments = [track(athm_settings, metadata=f"order-{i}") for i in range(25)]
    for payment in payments[::2]:
        athm_settings.complete(str(payment.pk))
    code, document, _ = run_json("--workers", "2")  # batches of 10
    assert code == 0
    assert document["checked"] == 25
    assert document["transitions"]["completed"] == 13
    assert len(received) == 13
    assert Payment.objects.filter(check_count=1).count() == 25


@pytest.mark.django_db(transaction=True)
def test_ecommerce_id_picks_up_a_refund_of_a_completed_payment(athm_settings, received):
    payment = track(athm_settings, "30.00", "order-9")
    athm_settings.complete(str(payment.pk))
    other = track(athm_settings)
    assert run("--ecommerce-id", str(payment.pk))[0] == 0
    assert Payment.objects.get(pk=payment.pk).status == S.COMPLETED
    assert Payment.objects.get(pk=other.pk).check_count == 0  # only the given one
    athm_settings.refund(str(payment.pk), "10.00")
    code, out, _ = run("--ecommerce-id", str(payment.pk), "-v", "2")
    assert code == 0
    assert f"REFUNDED   {payment.pk}  $10.00  order-9 (signal refund_sent)" in out
    assert received == [
        ("payment_completed", str(payment.pk), ""),
        ("refund_sent", str(payment.pk), "10.00"),
    ]
    refund = Refund.objects.get()
    assert refund.amount == Decimal("10.00") and refund.payment_id == payment.pk
    event = PaymentEvent.objects.get(kind=PaymentEvent.Kind.REFUND_SENT)
    assert event.source == "manual"


@pytest.mark.django_db(transaction=True)
def test_ecommerce_id_repeated_and_duplicated(athm_settings):
    first, second = track(athm_settings), track(athm_settings)
    code, document, _ = run_json(
        "--ecommerce-id", str(first.pk), "--ecommerce-id", str(second.pk), "--ecommerce-id",
        str(first.pk),
    )  # fmt: skip
    assert code == 0 and document["checked"] == 2


# --- exit codes ----------------------------------------------------------------------------


def assert_one_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert "Traceback" not in err
    return lines[0]


@pytest.mark.django_db(transaction=True)
def test_exit_1_when_a_payment_cannot_be_checked(athm_settings, received):
    payment = track(athm_settings)
    athm_settings.inject_fault("http503", "findPayment", times=100)
    code, document, err = run_json()
    assert code == 1
    assert document["checked"] == 0
    assert [error["ecommerce_id"] for error in document["errors"]] == [str(payment.pk)]
    assert "findPayment" in document["errors"][0]["reason"]
    assert "Traceback" not in err
    payment.refresh_from_db()
    assert payment.last_error and payment.claimed_by == ""
    assert SyncRun.objects.get().exit_code == 1


@pytest.mark.django_db(transaction=True)
def test_errors_are_listed_in_the_human_summary(athm_settings):
    payment = track(athm_settings)
    athm_settings.inject_fault("http503", "findPayment", times=100)
    code, out, _ = run()
    assert code == 1
    assert "errors: 1" in out
    assert f"    {payment.pk}: " in out


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("how", ["fault", "token"])
def test_exit_2_when_the_credentials_are_rejected(athm_settings, settings, how):
    for _ in range(3):
        track(athm_settings)
    if how == "fault":
        athm_settings.inject_fault("auth", "findPayment", times=100)
    else:
        settings.ATHM_SYNC = {**settings.ATHM_SYNC, "PUBLIC_TOKEN": "wrong-token"}
    code, out, err = run()
    assert code == 2
    line = assert_one_line(err)
    assert line.startswith("athm_sync: error: ATH Móvil rejected the credentials")
    assert "wrong-token" not in err + out
    assert not Payment.objects.exclude(claimed_by="").exists()  # claims released
    assert SyncRun.objects.get().exit_code == 2


@pytest.mark.django_db(transaction=True)
def test_exit_2_for_a_bad_setting(athm_settings, settings):
    track(athm_settings)
    settings.ATHM_SYNC = {**settings.ATHM_SYNC, "PUBLIC_TOKEN": ""}
    code, out, err = run("--json")
    assert code == 2
    line = assert_one_line(err)
    assert "PUBLIC_TOKEN" in line
    # The one document on stdout says the same: a monitor parsing it is never left empty.
    assert json.loads(out) == {"exit_code": 2, "error": line.removeprefix("athm_sync: error: ")}
    assert not SyncRun.objects.exists()


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--workers", "0"], "--workers must be at least 1"),
        (["--limit", "0"], "--limit must be at least 1"),
        (["--limit", "-3"], "--limit must be at least 1"),
        (["--ecommerce-id", "not-a-uuid"], "is not a UUID"),
        (["--ecommerce-id", str(uuid.UUID(int=7))], "no stored payment"),
    ],
)
def test_exit_2_for_bad_options(athm_settings, args, message):
    payment = track(athm_settings)
    before = snapshot_db()
    code, out, err = run(*args)
    assert code == 2
    line = assert_one_line(err)
    assert line.startswith("athm_sync: error: ") and message in line
    assert out == ""
    assert snapshot_db() == before
    assert Payment.objects.get(pk=payment.pk).check_count == 0


@pytest.mark.django_db(transaction=True)
def test_exit_1_when_the_api_is_unreachable(settings):
    settings.ATHM_SYNC = {
        **settings.ATHM_SYNC,
        "API_BASE_URL": "http://127.0.0.1:9",
        "REPORT_BASE_URL": "http://127.0.0.1:9",
        "MAX_ATTEMPTS": 2,
    }
    payments = [
        Payment.objects.track(uuid.uuid4(), total="10.00", metadata_1=f"o{i}") for i in range(3)
    ]
    code, document, err = run_json()
    assert code == 1
    assert sorted(error["ecommerce_id"] for error in document["errors"]) == sorted(
        str(p.pk) for p in payments
    )
    assert all("could not connect" in error["reason"] for error in document["errors"])
    line = assert_one_line(err)
    assert "unreachable" in line
    assert not Payment.objects.exclude(claimed_by="").exists()


@pytest.mark.django_db(transaction=True)
def test_exit_0_with_nothing_due(athm_settings):
    code, document, err = run_json()
    assert (code, document["checked"], err) == (0, 0, "")


@pytest.mark.django_db(transaction=True)
def test_a_payment_ath_movil_does_not_know_counts_as_checked(athm_settings):
    unknown = Payment.objects.track(uuid.uuid4(), total="10.00")
    code, document, _ = run_json()
    assert code == 0
    assert document["checked"] == 1 and document["errors"] == []
    assert Payment.objects.get(pk=unknown.pk).status == S.OPEN  # its grace has not passed


# --- queries ------------------------------------------------------------------------------


def queries_for_unchanged(sandbox, count: int) -> int:
    Payment.objects.all().delete()
    for _ in range(count):
        track(sandbox)
    Payment.objects.update(next_check_at=clock.now() - timedelta(seconds=1))
    with CaptureQueriesContext(connection) as context:
        code, document, _ = run_json("--workers", "2")
    assert code == 0 and document["unchanged"] == count
    return len(context.captured_queries)


# K: SELECT ... FOR UPDATE and UPDATE (on SQLite also BEGIN IMMEDIATE and COMMIT, which
# Django logs as queries) plus its share of a batch claim (5 queries per batch of 10).
QUERIES_PER_UNCHANGED = 5


@pytest.mark.django_db(transaction=True)
def test_an_unchanged_payment_costs_a_bounded_number_of_queries(athm_settings):
    five = queries_for_unchanged(athm_settings, 5)
    twenty = queries_for_unchanged(athm_settings, 20)
    assert twenty <= five + 15 * QUERIES_PER_UNCHANGED, (five, twenty)


# --- time, giving up, and runs that end badly ----------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_an_open_payment_left_past_its_deadline_expires(athm_settings, received):
    payment = track(athm_settings, "15.00", "order-7")
    assert run_json()[1]["unchanged"] == 1
    # Ten minutes and a bit later ATH Móvil says CANCEL (the sandbox follows the moved clock).
    with time_machine.travel(clock.now() + timedelta(seconds=601), tick=True):
        code, document, _ = run_json()
    assert code == 0
    assert document["transitions"]["expired"] == 1
    assert Payment.objects.get(pk=payment.pk).status == S.EXPIRED
    assert received == [("payment_expired", str(payment.pk), "")]


@pytest.mark.django_db(transaction=True)
def test_a_payment_still_open_after_max_age_is_given_up(athm_settings, settings):
    payment = track(athm_settings, age=120)  # remotely still OPEN: its deadline is far
    settings.ATHM_SYNC = {**settings.ATHM_SYNC, "MAX_AGE": timedelta(seconds=60)}
    code, document, _ = run_json()
    assert code == 0
    assert (document["given_up"], document["unchanged"]) == (1, 1)
    payment.refresh_from_db()
    assert payment.status == S.OPEN and payment.given_up_at is not None
    assert "given up" in payment.last_error
    assert not Payment.objects.due(clock.now() + timedelta(days=30)).exists()
    assert run_json()[1]["checked"] == 0


@pytest.mark.django_db(transaction=True)
def test_a_payment_deleted_during_the_run_is_skipped(athm_settings, monkeypatch):
    doomed, kept = track(athm_settings), track(athm_settings)
    athm_settings.complete(str(kept.pk))  # one answer applied alone, the other in bulk
    for module, name in ((reconcile, "apply"), (bulk_checks, "settle_unchanged")):
        original = getattr(module, name)

        def after_deleting(observation, *args, _original=original, **kwargs):
            Payment.objects.filter(pk=doomed.pk).delete()
            return _original(observation, *args, **kwargs)

        monkeypatch.setattr(module, name, after_deleting)
    code, document, _ = run_json()
    assert code == 0 and document["checked"] == 1
    assert Payment.objects.get(pk=kept.pk).check_count == 1


@pytest.mark.django_db(transaction=True)
def test_an_unexpected_crash_is_recorded_and_releases_claims(athm_settings, monkeypatch):
    track(athm_settings)

    def broken_apply(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(reconcile, "apply", broken_apply)
    monkeypatch.setattr(bulk_checks, "settle_unchanged", broken_apply)
    with pytest.raises(RuntimeError, match="disk full"):
        run()
    sync_run = SyncRun.objects.get()
    assert sync_run.exit_code == 2 and sync_run.finished_at is not None
    assert sync_run.errors == [
        {"ecommerce_id": "", "reason": "run aborted: RuntimeError: disk full", "kind": "aborted"}
    ]
    assert not Payment.objects.exclude(claimed_by="").exists()


# --- as a real process: the exit status and stderr a cron job sees ---------------------------


def run_process(*args: str, **options) -> subprocess.CompletedProcess[str]:
    """``python -m django athm_sync ...`` as cron runs it (see ``tests.commands``)."""
    return commands.run_process("athm_sync", *args, **options)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--workers", "0"], "--workers must be at least 1"),
        (["--ecommerce-id", "order-17"], "is not a UUID"),
        (["--limit", "x"], "argument --limit: invalid int value: 'x'"),
        (["--every-minute"], "unrecognized arguments: --every-minute"),
    ],
)
def test_a_real_process_exits_2_with_one_line_and_no_traceback(args, message):
    result = run_process(*args)
    assert result.returncode == 2, result.stderr
    assert result.stdout == ""
    line = assert_one_line(result.stderr)
    assert line.startswith("athm_sync: error: ") and message in line


def test_a_real_process_with_bad_settings_exits_2_with_one_line(tmp_path):
    """Not Django's system-check block and exit 1: cron and systemd read the exit code."""
    (tmp_path / "bad_settings.py").write_text(
        'from tests.settings import *  # noqa: F403\nATHM_SYNC = {**ATHM_SYNC, "WORKERS": 0}\n'
    )
    result = run_process(settings="bad_settings", extra_path=tmp_path)
    assert result.returncode == 2, result.stderr
    line = assert_one_line(result.stderr)
    assert line.startswith("athm_sync: error: bad ATHM_SYNC setting: ")
    assert "WORKERS'] must be a whole number of at least 1, not 0" in line


@pytest.mark.django_db(transaction=True)
def test_an_outage_stops_the_run_early_and_speaks_once(athm_settings, caplog):
    """ATH Móvil answers 503 to everything: after 5 payments in a row the run stops, leaves
    the rest due, and says so in a handful of lines, not one per attempt per payment."""
    import logging

    sandbox = athm_settings
    payments = [track(sandbox) for _ in range(40)]
    sandbox.inject_fault("http503", "findPayment", times=10_000)
    sandbox.reset_counts()

    with caplog.at_level(logging.INFO, logger="athm_sync"):
        code, document, _ = run_json("--workers", "1")

    assert code == 1
    assert document["checked"] == 0
    assert "the run stops early" in document["errors"][-1]["reason"]
    assert len(document["errors"]) == 6  # five payments, then the one line about stopping
    # MAX_ATTEMPTS (3) for each of the five, and for what the worker had already started.
    assert 5 * 3 <= sandbox.counts()["findPayment"] <= (5 + 2) * 3
    assert sandbox.counts()["transactionReport"] == 0  # the refund scan waits too
    left_due = Payment.objects.due().filter(check_count=0).count()
    assert left_due == len(payments) - 5
    assert not Payment.objects.exclude(claimed_by="").exists()
    ours = [r for r in caplog.records if r.name.startswith("athm_sync")]
    assert len(ours) <= 3, [r.getMessage() for r in ours]


# --- issue 20: exit codes, errors and --health agree; --json always; quiet runs --------------


def child(sandbox, tmp_path, **env: str) -> dict[str, str]:
    """The environment of a real child run against this test's database and the sandbox."""
    from tests.test_overlap import child_env

    return {**child_env(sandbox, tmp_path / "signals.log"), **env}


def real_json(env: dict[str, str], *args: str) -> tuple[int, dict]:
    """A real ``athm_sync --json ...`` process: its exit code and its one JSON document."""
    result = commands.run_process("athm_sync", "--json", *args, env=env)
    assert result.stdout.count("\n") == 1, result.stdout  # one document, one line
    document = json.loads(result.stdout)
    assert document["exit_code"] == result.returncode, result.stderr
    return result.returncode, document


def kinds(document: dict) -> list[str]:
    return sorted(problem["kind"] for problem in document["problems"])


@pytest.mark.django_db(transaction=True)
def test_a_receiver_that_raises_is_listed_with_its_kind_and_health_agrees(sandbox, tmp_path):
    """The issue's first finding: exit 1 with ``errors: []`` while --health said healthy."""
    (ecommerce_id,) = track_completed(sandbox)
    env = child(sandbox, tmp_path, ATHM_TEST_SHOP_RECEIVER="broken")

    code, summary = real_json(env)

    assert code == 1 and summary["receiver_errors"] == 1
    (error,) = summary["errors"]
    assert error["kind"] == "receiver_failing" and error["ecommerce_id"] == ecommerce_id
    assert "tests.shop.apps" in error["reason"] and "order service is down" in error["reason"]
    assert (summary["error_count"], summary["error_kinds"]) == (1, {"receiver_failing": 1})
    code, health = real_json(env, "--health")
    assert code == 1 and health["healthy"] is False
    assert kinds(health) == ["latest_run_failed", "no_recent_success", "receivers_failing"]


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize(
    ("cause", "kind", "lasting"),
    [
        ("payment", "payment_not_checked", "payments_failing"),
        ("report", "report_failed", "report_failing"),
    ],
)
def test_each_cause_of_exit_1_is_listed_and_keeps_health_unhealthy_while_it_lasts(
    sandbox, tmp_path, cause, kind, lasting
):
    """A run that fails, then a run that exits 0 because it does not meet the cause again
    (the payment waits out its backoff; the report is tried again a minute later): --health
    stays unhealthy until the cause is gone, and then says healthy."""
    env = child(sandbox, tmp_path)
    if cause == "payment":
        ecommerce_id, _ = sandbox.create_payment("5.00")
        Payment.objects.track(ecommerce_id, total=Decimal("5.00"))
        sandbox.inject_fault("http503", "findPayment", times=1000)
    else:
        sandbox.inject_fault("http503", "transactionReport", times=1000)

    code, failed = real_json(env)
    assert code == 1 and failed["error_kinds"] == {kind: 1}
    assert [error["kind"] for error in failed["errors"]] == [kind]

    code, clean = real_json(env)  # nothing due, no scan due: this run itself is fine
    assert (code, clean["errors"]) == (0, [])

    code, health = real_json(env, "--health")
    assert code == 1 and kinds(health) == [lasting]
    sandbox.clear_faults()
    Payment.objects.update(next_check_at=clock.now())
    ReportScan.objects.update(next_scan_at=clock.now())
    assert real_json(env)[0] == 0  # checked (or scanned) again, and it worked
    code, health = real_json(env, "--health")
    assert code == 0 and health["problems"] == [], health["reason"]


@pytest.mark.django_db(transaction=True)
def test_signals_the_database_will_not_send_are_an_error_of_their_kind(athm_settings, monkeypatch):
    from django.db import DatabaseError

    payment = track(athm_settings)
    athm_settings.complete(str(payment.pk))

    def refused(*args, **kwargs):
        raise DatabaseError("disk I/O error")

    monkeypatch.setattr(sending, "_dispatch_one", refused)
    code, document, _ = run_json()

    assert code == 1 and document["error_kinds"] == {"signals_unsent": 1}
    assert "left pending" in document["errors"][0]["reason"]
    monkeypatch.undo()
    code, health, _ = call("athm_sync", "--health", "--json")
    assert code == 1 and "latest_run_failed" in kinds(json.loads(health))


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--limit", "x"], "argument --limit: invalid int value: 'x'"),
        (["--workers", "0"], "--workers must be at least 1"),
        ([], "the database cannot be used: "),
        (["--health"], "the database cannot be used: "),
        (["--redeliver", "all"], "the database cannot be used: "),
        (["--acknowledge", "all"], "the database cannot be used: "),
        (["--from-date", "2026-01-01", "--to-date", "2026-01-02"], "the database cannot be used"),
        (["--health", "--max-age", "soon"], "--max-age must be a duration"),
    ],
)
def test_json_is_one_document_on_stdout_whatever_the_exit_code(args, message):
    """A monitor parsing stdout gets ``{"exit_code": 2, "error": ...}``, the same line as
    stderr's (the default database of tests/settings.py is never migrated, as a new
    project's)."""
    result = commands.run_process("athm_sync", *args, "--json")

    assert result.returncode == 2, result.stderr
    line = assert_one_line(result.stderr).removeprefix("athm_sync: error: ")
    assert message in line
    assert result.stdout.count("\n") == 1
    assert json.loads(result.stdout) == {"exit_code": 2, "error": line}


@pytest.mark.django_db(transaction=True)
def test_json_of_a_run_the_credentials_stop_is_its_summary_with_the_error(sandbox, tmp_path):
    track_completed(sandbox)
    (tmp_path / "wrong_token.py").write_text(
        "from tests.settings import *  # noqa: F403\n"
        'ATHM_SYNC = {**ATHM_SYNC, "PUBLIC_TOKEN": "not-the-token"}  # noqa: F405\n'
    )
    env = child(sandbox, tmp_path, DJANGO_SETTINGS_MODULE="wrong_token")
    env["PYTHONPATH"] = f"{tmp_path}:{env['PYTHONPATH']}"

    code, summary = real_json(env)

    assert code == 2 and set(summary) == JSON_KEYS
    assert summary["error"].startswith("ATH Móvil rejected the credentials")
    assert summary["error_kinds"] == {"credentials_rejected": 1}
    assert "not-the-token" not in json.dumps(summary)


@pytest.mark.django_db(transaction=True)
def test_a_run_with_nothing_to_say_prints_nothing_so_a_cron_log_grows_with_events(
    sandbox, tmp_path
):
    """The README's cron line appends a run's output to a log every minute: runs that only
    checked payments that did not change add nothing; the run with a transition adds its
    summary. --json and the SyncRun keep every run's summary."""
    ecommerce_id, _ = sandbox.create_payment("5.00")
    Payment.objects.track(ecommerce_id, total=Decimal("5.00"))
    env = child(sandbox, tmp_path)
    log = ""
    for _ in range(3):
        Payment.objects.update(next_check_at=clock.now())
        result = commands.run_process("athm_sync", env=env)
        assert result.returncode == 0, result.stderr
        log += result.stdout + result.stderr

    assert log == ""
    assert list(SyncRun.objects.values_list("checked", "unchanged")) == [(1, 1)] * 3
    Payment.objects.update(next_check_at=clock.now())
    code, summary = real_json(env)
    assert (code, summary["checked"], summary["unchanged"]) == (0, 1, 1)  # --json says it all

    sandbox.complete(ecommerce_id)
    Payment.objects.update(next_check_at=clock.now())
    result = commands.run_process("athm_sync", env=env)
    assert result.returncode == 0 and result.stderr == ""
    assert result.stdout.startswith("athm_sync: checked 1 payment(s)")
    assert "completed: 1" in result.stdout


@pytest.mark.django_db(transaction=True)
def test_a_quiet_run_says_one_line_at_a_terminal_and_everything_with_v2(athm_settings, caplog):
    import logging

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    track(athm_settings)
    terminal = Terminal()
    with caplog.at_level(logging.DEBUG, logger="athm_sync.runner"):
        call_command_with(terminal)
    (line,) = terminal.getvalue().splitlines()
    assert line.startswith("athm_sync: checked 1 payment(s) in ") and "nothing changed" in line
    (logged,) = [r for r in caplog.records if "ended with exit" in r.getMessage()]
    assert logged.levelno == logging.DEBUG  # the log, too, grows with events
    Payment.objects.update(next_check_at=clock.now())
    code, out, _ = run("-v", "2")
    assert code == 0 and "unchanged: 1" in out and "errors: 0" in out


def call_command_with(stdout: io.StringIO) -> None:
    from django.core.management import call_command

    call_command("athm_sync", stdout=stdout, stderr=io.StringIO())


@pytest.mark.django_db(transaction=True)
def test_a_run_with_events_is_logged_at_info(story, caplog):
    import logging

    with caplog.at_level(logging.INFO, logger="athm_sync.runner"):
        assert run()[0] == 0
    (logged,) = [r for r in caplog.records if "ended with exit" in r.getMessage()]
    assert logged.levelno == logging.INFO
    assert "checked 5 (unchanged 1)" in logged.getMessage()
    assert "completed 2" in logged.getMessage()
