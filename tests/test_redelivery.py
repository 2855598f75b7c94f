"""Receivers that raised are delivered again, alone (athm_sync.outbox), as a shop sees it.

The runs are the real command (in this process, or real child processes where the point is a
process: a SIGKILL, two runs at once), against the sandbox; time is driven with time-machine.
The receivers write the test shop's ``Fulfilment`` rows, so a call that was rolled back, or
made twice, shows in the shop's own table.
"""

from __future__ import annotations

import json
import logging
import os
import random
import selectors
import signal
import subprocess
from collections import Counter
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from athm_sync import clock, outbox, reconcile, retention, signals
from athm_sync.conf import get_settings
from athm_sync.models import Payment, PaymentEvent, ReceiverDelivery
from athm_sync.sandbox import SandboxServer
from tests.commands import call, run_process
from tests.shop import apps as shop
from tests.shop.models import Fulfilment
from tests.test_overlap import child_env, start_child, track_completed

pytestmark = pytest.mark.django_db(transaction=True)

KILL_SEED = int(os.environ.get("ATHM_TEST_KILL_SEED", "20261204"))
RECONCILE = "athm_sync.reconcile"  # logs the first send's failure
# How many more calls of ``flaky`` raise.
FLAKY = {"failures": 0}


def flaky(sender: Any, payment: Payment, **kwargs: Any) -> None:
    """Writes the shop's row, then raises while ``FLAKY["failures"]`` says so."""
    shop.fulfil("flaky", payment)
    if FLAKY.get("kill_connection"):  # PostgreSQL: the server ends this very connection
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_terminate_backend(pg_backend_pid())")
    if FLAKY["failures"]:
        FLAKY["failures"] -= 1
        raise RuntimeError("the order service is down")


def steady(sender: Any, payment: Payment, **kwargs: Any) -> None:
    shop.fulfil("steady", payment)


@pytest.fixture
def receivers():
    """``steady`` then ``flaky`` on payment_completed; ``flaky`` raises ``failures`` times."""

    def connect(failures: int) -> None:
        FLAKY["failures"] = failures
        signals.payment_completed.connect(steady, weak=False)
        signals.payment_completed.connect(flaky, weak=False)

    yield connect
    signals.payment_completed.disconnect(steady)
    signals.payment_completed.disconnect(flaky)
    FLAKY["failures"] = 0
    FLAKY.pop("kill_connection", None)


def run() -> tuple[int, dict[str, Any]]:
    code, out, _ = call("athm_sync", "--json")
    return code, json.loads(out)


def rows() -> list[str]:
    return sorted(Fulfilment.objects.values_list("kind", flat=True))


def later(time_machine: Any, **delta: float) -> None:
    time_machine.move_to(clock.now() + timedelta(**delta), tick=False)


# -- the schedule ------------------------------------------------------------------------------


def test_the_retry_schedule_doubles_from_a_minute_to_an_hour_and_ends_after_three_days():
    minutes = [outbox.retry_delay(n).total_seconds() / 60 for n in range(1, 10)]
    assert minutes == [1, 2, 4, 8, 16, 32, 60, 60, 60]
    conf = get_settings()
    assert conf.receiver_give_up_after == timedelta(days=3)
    first = clock.now()
    delivery = ReceiverDelivery(first_failed_at=first, attempts=40)
    deadline = first + timedelta(days=3)
    # The last retry lands on the deadline itself; after it, none.
    assert outbox.next_attempt(delivery, deadline - timedelta(minutes=5), conf) == deadline
    assert outbox.next_attempt(delivery, deadline, conf) is None


# -- retried alone, after the backoff --------------------------------------------------------


def test_a_receiver_that_raised_once_is_called_again_alone_after_the_backoff(
    athm_settings, receivers, time_machine
):
    (ecommerce_id,) = track_completed(athm_settings)
    receivers(failures=1)

    code, first = run()

    # The transition stands and steady's row committed; flaky's row was rolled back.
    assert code == 1 and first["receiver_errors"] == 1
    assert rows() == ["steady"]
    delivery = ReceiverDelivery.objects.get()
    assert delivery.receiver == f"{__name__}.flaky" and delivery.attempts == 1
    assert delivery.next_attempt_at == delivery.first_failed_at + timedelta(minutes=1)
    assert first["receivers"]["failing"] == 1
    (listed,) = first["errors"]
    assert listed["ecommerce_id"] == ecommerce_id
    assert f"receiver {__name__}.flaky of payment_completed (failed receiver" in listed["reason"]
    assert "RuntimeError: the order service is down" in listed["reason"]

    later(time_machine, seconds=30)  # before the backoff: not called, the run still says so
    code, early = run()
    assert code == 1 and early["receivers"]["retried"] == 0 and rows() == ["steady"]

    later(time_machine, seconds=31)
    code, retried = run()

    assert code == 0, retried["errors"]
    assert retried["receivers"] == {
        "retried": 1,
        "delivered": 1,
        "given_up": 0,
        "failing": 0,
        "failing_since": None,
        "given_up_unacknowledged": 0,
    }
    assert retried["signals_sent"] == 0 and retried["receiver_errors"] == 0
    assert rows() == ["flaky", "steady"]  # steady was not called again
    delivery.refresh_from_db()
    assert delivery.delivered_at is not None and delivery.next_attempt_at is None
    event = PaymentEvent.objects.get()
    assert event.receiver_errors == 0 and len(event.errors) == 1  # the first send's record

    later(time_machine, hours=2)
    assert run()[0] == 0 and rows() == ["flaky", "steady"]


def test_the_runs_summary_says_how_many_receivers_are_failing(athm_settings, receivers):
    track_completed(athm_settings)
    receivers(failures=1)
    call("athm_sync")

    code, out, _ = call("athm_sync")

    since = ReceiverDelivery.objects.get().first_failed_at.isoformat()
    assert code == 1
    assert "failed receivers: retried 0, delivered 0, given up 0, still failing 1" in out
    assert f"(since {since})" in out
    assert "has failed 1 time(s) since" in out and "RuntimeError" in out


def test_the_failed_receivers_page_costs_the_same_queries_however_many(
    athm_settings, receivers, staff
):
    receivers(failures=100)
    track_completed(athm_settings, 2)
    run()
    few = query_count(staff, "/admin/athm_sync/receiverdelivery/")
    track_completed(athm_settings, 10)
    run()
    many = query_count(staff, "/admin/athm_sync/receiverdelivery/")
    assert ReceiverDelivery.objects.count() == 12 and few == many


def query_count(client: Any, url: str) -> int:
    with CaptureQueriesContext(connection) as context:
        assert client.get(url).status_code == 200
    return len(context.captured_queries)


def retry_queries(sandbox: SandboxServer, time_machine: Any, count: int) -> int:
    """The queries of one run that retries ``count`` failed receivers, each delivered."""
    track_completed(sandbox, count)
    FLAKY["failures"] = count
    run()
    later(time_machine, minutes=1)
    with CaptureQueriesContext(connection) as context:
        code, summary = run()
    assert code == 0 and summary["receivers"]["delivered"] == count
    return len(context.captured_queries)


def test_each_retry_costs_a_fixed_number_of_queries(athm_settings, receivers, time_machine):
    receivers(failures=0)
    five = retry_queries(athm_settings, time_machine, 5)
    twenty = retry_queries(athm_settings, time_machine, 20)
    per_retry = (twenty - five) / 15
    print(f"\n{connection.vendor}: a run retrying 5 receivers: {five} queries, 20: {twenty}")
    # The row locked with its event and payment, the mark, SAVEPOINT, the receiver's INSERT,
    # RELEASE, "delivered", the event's count (on SQLite BEGIN and COMMIT are logged too).
    assert per_retry == int(per_retry) and per_retry <= 9, (five, twenty)


def test_a_retry_that_fails_again_rolls_its_writes_back_and_backs_off(
    athm_settings, receivers, time_machine, caplog
):
    track_completed(athm_settings)
    receivers(failures=2)
    run()
    later(time_machine, minutes=1)

    with caplog.at_level(logging.WARNING, logger="athm_sync.outbox"):
        code, summary = run()

    assert code == 1 and summary["receivers"]["retried"] == 1
    assert summary["receiver_errors"] == 1 and rows() == ["steady"]
    delivery = ReceiverDelivery.objects.get()
    assert delivery.attempts == 2 and delivery.given_up_at is None
    assert delivery.next_attempt_at == delivery.last_failed_at + timedelta(minutes=2)
    (warned,) = [r for r in caplog.records if r.name == "athm_sync.outbox"]
    assert warned.levelno == logging.WARNING
    assert "Traceback (most recent call last):" in warned.getMessage()
    assert "\nRuntimeError: " in warned.getMessage()  # the traceback, as stored (masked)


@pytest.fixture
def refuse_delivered_mark(db):
    """A trigger that makes the database refuse to mark a failed receiver delivered, as a full
    disk would at that moment: after the receiver ran, before the commit."""
    table = ReceiverDelivery._meta.db_table
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            cursor.execute(
                "CREATE FUNCTION athm_test_refuse_mark() RETURNS trigger AS $$ BEGIN "
                "RAISE EXCEPTION 'could not extend file: No space left on device'; END $$ "
                "LANGUAGE plpgsql"
            )
            cursor.execute(
                f"CREATE TRIGGER athm_test_refuse_mark BEFORE UPDATE ON {table} FOR EACH ROW "
                "WHEN (NEW.delivered_at IS NOT NULL) EXECUTE FUNCTION athm_test_refuse_mark()"
            )
        else:
            cursor.execute(
                f"CREATE TRIGGER athm_test_refuse_mark BEFORE UPDATE ON {table} "
                "WHEN NEW.delivered_at IS NOT NULL BEGIN "
                "SELECT RAISE(ABORT, 'database or disk is full'); END"
            )

    def remove() -> None:
        with connection.cursor() as cursor:
            on = f" ON {table}" if connection.vendor == "postgresql" else ""
            cursor.execute(f"DROP TRIGGER IF EXISTS athm_test_refuse_mark{on}")
            if connection.vendor == "postgresql":
                cursor.execute("DROP FUNCTION IF EXISTS athm_test_refuse_mark()")

    yield remove
    remove()


def test_the_receivers_writes_commit_only_with_the_delivered_mark(
    athm_settings, receivers, time_machine, refuse_delivered_mark
):
    track_completed(athm_settings)
    receivers(failures=1)
    run()
    later(time_machine, minutes=1)

    code, summary = run()  # flaky runs and writes, then "delivered" cannot be written

    assert code == 1 and rows() == ["steady"]  # its row went with the refused mark
    assert any("could not be retried" in error["reason"] for error in summary["errors"])
    delivery = ReceiverDelivery.objects.get()
    assert delivery.delivered_at is None and delivery.attempts == 1
    assert delivery.next_attempt_at <= clock.now()  # still due

    refuse_delivered_mark()
    code, summary = run()
    assert code == 0 and rows() == ["flaky", "steady"]
    assert summary["receivers"]["delivered"] == 1


def test_a_receiver_that_keeps_failing_is_given_up_loudly_once(
    athm_settings, receivers, time_machine, caplog, settings
):
    settings.ATHM_SYNC = {**settings.ATHM_SYNC, "RECEIVER_GIVE_UP_AFTER": timedelta(hours=3)}
    track_completed(athm_settings)
    receivers(failures=10_000)
    run()
    delivery = ReceiverDelivery.objects.get()
    first_failed = delivery.first_failed_at
    gaps = []
    with caplog.at_level(logging.WARNING, logger="athm_sync.outbox"):
        while delivery.next_attempt_at is not None:
            gaps.append((delivery.next_attempt_at - delivery.last_failed_at).total_seconds() / 60)
            time_machine.move_to(delivery.next_attempt_at, tick=False)
            code, summary = run()
            delivery.refresh_from_db()
        given_up_run = summary
        later(time_machine, hours=5)
        code, after = run()

    assert gaps == [1, 2, 4, 8, 16, 32, 60, 57]  # the last one lands on the 3 hours
    assert delivery.given_up_at == first_failed + timedelta(hours=3)
    assert delivery.attempts == len(gaps) + 1
    assert given_up_run["receivers"]["given_up"] == 1 and given_up_run["exit_code"] == 1
    assert any("given up at" in error["reason"] for error in given_up_run["errors"])
    errors = [r for r in caplog.records if r.levelno == logging.ERROR and r.name != RECONCILE]
    assert len(errors) == 1 and "Gave up on receiver" in errors[0].getMessage()
    assert f"--redeliver {delivery.pk}" in errors[0].getMessage()
    # Given up: no more calls, but every run still lists it (exit 1) until a person
    # acknowledges it; then the runs are clean again.
    assert after["receivers"]["retried"] == 0 and code == 1
    assert after["receivers"]["given_up_unacknowledged"] == 1
    assert [error["kind"] for error in after["errors"]] == ["receiver_given_up"]
    assert f"--acknowledge {delivery.pk}" in after["errors"][0]["reason"]
    assert Fulfilment.objects.filter(kind="flaky").count() == 0
    assert call("athm_sync", "--acknowledge", str(delivery.pk))[0] == 0
    code, acknowledged = run()
    assert code == 0 and acknowledged["errors"] == []


def test_a_receiver_no_longer_connected_is_given_up_with_the_reason(
    athm_settings, receivers, time_machine, caplog
):
    track_completed(athm_settings)
    receivers(failures=1)
    run()
    signals.payment_completed.disconnect(flaky)  # a deploy removed it
    later(time_machine, minutes=1)

    with caplog.at_level(logging.ERROR, logger="athm_sync.outbox"):
        code, summary = run()

    delivery = ReceiverDelivery.objects.get()
    assert delivery.given_up_at is not None and delivery.delivered_at is None
    assert "is connected to payment_completed any more" in delivery.last_error
    assert code == 1 and summary["receivers"]["given_up"] == 1
    assert len([r for r in caplog.records if r.name == "athm_sync.outbox"]) == 1
    assert rows() == ["steady"]


def test_of_two_receivers_with_one_name_only_the_one_that_failed_is_called_again(
    athm_settings, time_machine
):
    calls = []

    def make(number: int) -> Any:
        def receiver(sender: Any, payment: Payment, **kwargs: Any) -> None:
            calls.append(number)
            if number == 2 and calls.count(2) == 1:
                raise RuntimeError("the second one breaks once")

        return receiver

    made = [make(1), make(2)]
    for receiver in made:
        signals.payment_completed.connect(receiver, weak=False)
    try:
        track_completed(athm_settings)
        run()
        later(time_machine, minutes=1)
        code, _ = run()
    finally:
        for receiver in made:
            signals.payment_completed.disconnect(receiver)

    assert ReceiverDelivery.objects.get().receiver.endswith("make.<locals>.receiver#2")
    assert code == 0 and calls == [1, 2, 2]


def test_an_async_receiver_is_named_for_its_function():
    async def on_completed(sender: Any, payment: Payment, **kwargs: Any) -> None:
        return None

    signals.payment_completed.connect(on_completed, weak=False)
    try:
        names = [name for name, _ in reconcile.named_receivers(signals.payment_completed, Payment)]
    finally:
        signals.payment_completed.disconnect(on_completed)
    assert f"{__name__}.{on_completed.__qualname__}" in names
    assert not any("0x" in name for name in names)


# -- health, admin, command ------------------------------------------------------------------


def test_health_is_unhealthy_while_a_receiver_fails(athm_settings, receivers, time_machine):
    track_completed(athm_settings)
    receivers(failures=1)
    run()
    failed_at = ReceiverDelivery.objects.get().first_failed_at
    later(time_machine, seconds=20)

    code, out, err = call("athm_sync", "--health")
    _, document, _ = call("athm_sync", "--health", "--json")

    assert code == 1 and out == ""
    assert "unhealthy: 1 signal receiver(s) failing, the first since " in err
    assert f"{failed_at:%Y-%m-%d %H:%M:%S} UTC (20 s ago)" in err
    health = json.loads(document)
    assert health["healthy"] is False and health["receivers_failing"] == 1
    assert health["receivers_failing_since"] == failed_at.isoformat()

    later(time_machine, minutes=1)
    assert run()[0] == 0
    code, out, _ = call("athm_sync", "--health")
    assert code == 0 and "failing" not in out


def test_health_costs_the_same_queries_however_many_receivers_fail(athm_settings, receivers):
    track_completed(athm_settings, 3)
    receivers(failures=3)
    run()
    from athm_sync.health import check_health

    with CaptureQueriesContext(connection) as context:
        health = check_health()
    # the latest run, the payments (given up, failing), held, receivers, the refund scan;
    # the latest run failed: the last success too; none is recent: the newest run, to name it
    assert len(context.captured_queries) == 7
    assert (health.healthy, health.receivers_failing) == (False, 3)


@pytest.mark.parametrize("page", ["receiverdelivery", "paymentevent"])
def test_the_admin_sends_a_failed_receiver_again_now(
    athm_settings, receivers, operator, staff, page
):
    track_completed(athm_settings)
    receivers(failures=1)
    run()
    delivery = ReceiverDelivery.objects.get()
    selected = delivery.pk if page == "receiverdelivery" else delivery.event_id
    send_again = {"action": "redeliver_action", "_selected_action": [str(selected)]}

    # With the view permission only: not offered, and a post of it calls nothing.
    assert "redeliver_action" not in staff.get(f"/admin/athm_sync/{page}/").content.decode()
    staff.post(f"/admin/athm_sync/{page}/", send_again)
    assert rows() == ["steady"] and ReceiverDelivery.objects.get().delivered_at is None

    listing = operator.get(f"/admin/athm_sync/{page}/").content.decode()
    done = operator.post(f"/admin/athm_sync/{page}/", send_again, follow=True)

    assert "redeliver_action" in listing
    said = "Called 1 failed receiver(s) again: 1 delivered, 0 failed again."
    assert said in done.content.decode()
    assert rows() == ["flaky", "steady"]  # now, before its backoff; steady not again
    delivery.refresh_from_db()
    assert delivery.delivered_at is not None
    event_page = operator.get(f"/admin/athm_sync/paymentevent/{delivery.event_id}/change/")
    assert f"{__name__}.flaky" in event_page.content.decode()


def test_redeliver_sends_now_and_refuses_bad_ids_changing_nothing(athm_settings, receivers):
    track_completed(athm_settings, 2)
    receivers(failures=2)
    run()
    first, second = ReceiverDelivery.objects.order_by("pk")

    for bad, says in [
        (["abc"], "--redeliver 'abc' is not a failed receiver's id"),
        ([str(second.pk + 100)], f"no failed receiver with id {second.pk + 100}"),
        ([str(first.pk), "all"], "ids or 'all', not both"),
        (["all", "--dry-run"], "--redeliver does not go with --dry-run"),
        (["all", "--health"], "--redeliver does not go with --health"),
    ]:
        code, out, err = call("athm_sync", "--redeliver", *bad)
        assert (code, out) == (2, "") and says in err and err.count("\n") <= 1, err
    assert rows() == ["steady", "steady"]
    assert set(ReceiverDelivery.objects.values_list("attempts", flat=True)) == {1}

    code, out, _ = call("athm_sync", "--redeliver", str(first.pk))
    assert code == 0 and "1 delivered, 0 failed again" in out
    code, out, err = call("athm_sync", "--redeliver", str(first.pk))  # delivered already
    assert code == 2 and "was delivered already" in err
    code, out, _ = call("athm_sync", "--redeliver", "all", "--json")
    document = json.loads(out)
    assert code == 0 and (document["redelivered"], document["delivered"]) == (1, 1)
    assert document["results"][0]["id"] == second.pk
    assert rows() == ["flaky", "flaky", "steady", "steady"]
    assert not outbox.outstanding().exists()


def test_redeliver_exits_1_when_the_receiver_fails_again(athm_settings, receivers):
    track_completed(athm_settings)
    receivers(failures=2)
    run()

    code, out, _ = call("athm_sync", "--redeliver", "all")

    assert code == 1 and "0 delivered, 1 failed again" in out and "RuntimeError" in out
    assert ReceiverDelivery.objects.get().attempts == 2


def test_history_retention_keeps_an_event_whose_receiver_is_outstanding(
    athm_settings, receivers, time_machine
):
    track_completed(athm_settings, 2)
    receivers(failures=1)
    run()
    later(time_machine, days=91)

    pruned = retention.prune(get_settings(), clock.now())

    assert pruned["payment_events"] == 1  # the one whose receivers all succeeded
    assert PaymentEvent.objects.get().receiver_deliveries.count() == 1


# -- given up: counted until a person acknowledges it ------------------------------------------


def give_up_all() -> None:
    """The failing receivers reach RECEIVER_GIVE_UP_AFTER and are given up (as a run would)."""
    ReceiverDelivery.objects.filter(given_up_at__isnull=True).update(
        given_up_at=clock.now(), next_attempt_at=None
    )


def test_a_given_up_receiver_counts_until_a_person_acknowledges_it(
    athm_settings, receivers, tmp_path
):
    """Given up is not settled: every run lists it (exit 1) and --health is unhealthy until
    --acknowledge (or the admin) says its order was settled by hand."""
    track_completed(athm_settings)
    receivers(failures=1000)
    run()
    give_up_all()
    (delivery,) = ReceiverDelivery.objects.all()
    env = child_env(athm_settings, tmp_path / "signals.log")

    code, summary = run()
    health = run_process("athm_sync", "--health", "--json", env=env)

    assert code == 1 and [error["kind"] for error in summary["errors"]] == ["receiver_given_up"]
    assert summary["receivers"]["given_up_unacknowledged"] == 1
    (listed,) = summary["errors"]
    assert f"--acknowledge {delivery.pk} once its order is settled" in listed["reason"]
    assert health.returncode == 1
    document = json.loads(health.stdout)
    assert [problem["kind"] for problem in document["problems"]] == [
        "receivers_given_up",
        "no_recent_success",
        "latest_run_failed",
    ]
    assert document["receivers_given_up_unacknowledged"] == 1

    acknowledged = run_process("athm_sync", "--acknowledge", str(delivery.pk), env=env)

    assert acknowledged.returncode == 0, acknowledged.stderr
    assert acknowledged.stdout == (
        f"athm_sync: acknowledged 1 given-up receiver(s): {delivery.pk}; runs no longer list "
        "them and --health no longer counts them\n"
    )
    delivery.refresh_from_db()
    assert delivery.state == "acknowledged" and delivery.delivered_at is None
    code, summary = run()
    assert (code, summary["errors"]) == (0, [])
    assert run_process("athm_sync", "--health", env=env).returncode == 0


def test_acknowledge_refuses_what_it_cannot_acknowledge_changing_nothing(athm_settings, receivers):
    track_completed(athm_settings, 3)
    receivers(failures=1000)
    run()
    given_up, failing, delivered = ReceiverDelivery.objects.order_by("pk")
    give_up_all()
    ReceiverDelivery.objects.filter(pk=failing.pk).update(given_up_at=None)
    ReceiverDelivery.objects.filter(pk=delivered.pk).update(delivered_at=clock.now())

    for bad, says in [
        ([str(failing.pk)], f"failed receiver {failing.pk} is still being retried"),
        ([str(delivered.pk)], f"failed receiver {delivered.pk} was delivered"),
        ([str(delivered.pk + 100)], f"no failed receiver with id {delivered.pk + 100}"),
        (["x"], "--acknowledge 'x' is not a failed receiver's id"),
        ([str(given_up.pk), "--health"], "--acknowledge does not go with --health"),
        ([str(given_up.pk), "--redeliver", "all"], "--acknowledge does not go with --redeliver"),
    ]:
        code, out, err = call("athm_sync", "--acknowledge", *bad)
        assert (code, out) == (2, "") and says in err and err.count("\n") <= 1, err
    assert not ReceiverDelivery.objects.filter(acknowledged_at__isnull=False).exists()

    code, out, _ = call("athm_sync", "--acknowledge", "all", "--json")
    assert (code, json.loads(out)) == (0, {"acknowledged": [given_up.pk], "exit_code": 0})
    code, out, _ = call("athm_sync", "--acknowledge", "all")
    assert code == 0 and "acknowledged 0 given-up receiver(s): none left" in out


def test_the_admin_acknowledges_with_the_change_permission_only(athm_settings, receivers, staff):
    from django.contrib.auth.models import Permission

    track_completed(athm_settings, 2)
    receivers(failures=1000)
    run()
    given_up, failing = ReceiverDelivery.objects.order_by("pk")
    ReceiverDelivery.objects.filter(pk=given_up.pk).update(given_up_at=clock.now())
    page = "/admin/athm_sync/receiverdelivery/"
    selection = {
        "action": "acknowledge_action",
        "_selected_action": [str(given_up.pk), str(failing.pk)],
    }

    assert "acknowledge_action" not in staff.get(page).content.decode()  # view only
    staff.post(page, selection, follow=True)
    assert not ReceiverDelivery.objects.filter(acknowledged_at__isnull=False).exists()

    user = staff.get(page).wsgi_request.user
    user.user_permissions.add(Permission.objects.get(codename="change_receiverdelivery"))
    assert "acknowledge_action" in staff.get(page).content.decode()
    done = staff.post(page, selection, follow=True).content.decode()

    assert "Acknowledged 1 given-up receiver(s); left alone: 1 still being retried" in done
    assert list(
        ReceiverDelivery.objects.filter(acknowledged_at__isnull=False).values_list("pk", flat=True)
    ) == [given_up.pk]


def test_history_retention_keeps_a_given_up_receiver_until_it_is_acknowledged(
    athm_settings, receivers, time_machine
):
    track_completed(athm_settings)
    receivers(failures=1000)
    run()
    give_up_all()
    later(time_machine, days=91)

    assert retention.prune(get_settings(), clock.now())["payment_events"] == 0
    outbox.acknowledge(None)
    assert retention.prune(get_settings(), clock.now())["payment_events"] == 1
    assert not ReceiverDelivery.objects.exists()


# -- real processes ----------------------------------------------------------------------------


def failed_two_minutes_ago(sandbox: SandboxServer, time_machine: Any, count: int) -> None:
    """``count`` completions whose shop receiver raised two minutes ago: due for a retry."""
    now = clock.now()
    time_machine.move_to(now - timedelta(minutes=2), tick=False)
    track_completed(sandbox, count)
    shop.connect("broken")
    try:
        assert run()[0] == 1
    finally:
        shop.disconnect()
    time_machine.move_to(now, tick=False)
    assert outbox.due(clock.now()).count() == count and Fulfilment.objects.count() == 0


def wait_for_line(child: subprocess.Popen, marker: str, timeout: float = 60) -> None:
    """Read the child's stderr until a line holds ``marker``."""
    with selectors.DefaultSelector() as selector:
        selector.register(child.stderr, selectors.EVENT_READ)
        while True:
            assert selector.select(timeout), f"the child never said {marker!r}"
            line = child.stderr.readline()
            assert line, f"the child ended without saying {marker!r}"
            if marker in line:
                return


def retry_until_delivered(time_machine: Any) -> None:
    """What the next scheduled runs do; PostgreSQL may still hold a killed backend's lock a
    moment, which SKIP LOCKED passes over."""
    shop.connect("instant")
    try:
        for _ in range(5):
            code, summary = run()
            if not outbox.failing().exists():
                break
            time_machine.move_to(clock.now() + timedelta(hours=1), tick=False)
        assert code == 0, summary["errors"]
    finally:
        shop.disconnect()


def test_a_retry_killed_inside_the_receiver_is_made_again_once(
    athm_settings: SandboxServer, time_machine: Any, tmp_path: Path
) -> None:
    failed_two_minutes_ago(athm_settings, time_machine, 1)
    env = {**child_env(athm_settings, tmp_path / "signals.log"), shop.RECEIVER_ENV: "hang"}
    child = start_child(env)
    try:
        wait_for_line(child, shop.INSIDE_MARKER)  # its row is written, not committed
    finally:
        child.send_signal(signal.SIGKILL)
        child.communicate(timeout=30)

    delivery = ReceiverDelivery.objects.get()
    assert delivery.delivered_at is None and delivery.attempts == 1  # all rolled back
    assert Fulfilment.objects.count() == 0

    retry_until_delivered(time_machine)
    later(time_machine, hours=2)
    run()

    assert list(Fulfilment.objects.values_list("kind", flat=True)) == ["payment_completed"]
    delivery.refresh_from_db()
    assert delivery.delivered_at is not None


def test_retries_killed_at_random_moments_deliver_each_receiver_exactly_once(
    athm_settings: SandboxServer, time_machine: Any, tmp_path: Path
) -> None:
    """Runs retrying 60 failed receivers (20 ms each), SIGKILLed at seeded random moments;
    then the next runs: every receiver's row exactly once, none lost, none doubled."""
    failed_two_minutes_ago(athm_settings, time_machine, 60)
    seed = f"{KILL_SEED}-{connection.vendor}"
    rng = random.Random(seed)
    env = {**child_env(athm_settings, tmp_path / "signals.log"), shop.RECEIVER_ENV: "slow"}
    kills = 0
    partly = 0  # kills after which some retries were done and some not
    for _ in range(8):
        if not outbox.failing().exists():
            break
        child = start_child(env)
        try:
            child.wait(timeout=rng.uniform(0.3, 1.3))
        except subprocess.TimeoutExpired:
            child.send_signal(signal.SIGKILL)
            kills += 1
            partly += 0 < Fulfilment.objects.count() < 60
        child.communicate(timeout=30)

    retry_until_delivered(time_machine)

    per_payment = Counter(Fulfilment.objects.values_list("payment_id", flat=True))
    print(f"\n{connection.vendor}: {kills} kills ({partly} mid-batch), seed {seed}")
    assert kills > 0, seed
    assert len(per_payment) == 60 and set(per_payment.values()) == {1}, seed
    assert not outbox.outstanding().exists()


def test_two_runs_at_once_never_deliver_a_retry_twice(
    athm_settings: SandboxServer, time_machine: Any, tmp_path: Path
) -> None:
    failed_two_minutes_ago(athm_settings, time_machine, 40)
    env = {**child_env(athm_settings, tmp_path / "signals.log"), shop.RECEIVER_ENV: "slow"}
    children = [start_child(env), start_child(env)]
    outputs = [child.communicate(timeout=120) for child in children]

    # A run that ends while the other is still retrying lists those as failing (exit 1).
    assert {child.returncode for child in children} <= {0, 1}, [err for _, err in outputs]
    summaries = [json.loads(out) for out, _ in outputs]
    assert sum(summary["receivers"]["delivered"] for summary in summaries) == 40
    per_payment = Counter(Fulfilment.objects.values_list("payment_id", flat=True))
    assert len(per_payment) == 40 and set(per_payment.values()) == {1}
    assert not outbox.outstanding().exists()
    pids = Counter(Fulfilment.objects.values_list("pid", flat=True))
    print(f"\n{connection.vendor}: retries delivered per process {dict(pids)}")


def test_a_connection_that_dies_during_a_retry_is_one_line_and_the_retry_stays_due(
    athm_settings, receivers, time_machine
):
    if connection.vendor != "postgresql":
        pytest.skip("pg_terminate_backend needs PostgreSQL (set DATABASE_URL)")
    track_completed(athm_settings)
    receivers(failures=1)
    assert run()[0] == 1
    later(time_machine, minutes=2)
    FLAKY["kill_connection"] = True

    code, out, err = call("athm_sync", "--json")

    assert code == 1 and len(err.strip().splitlines()) == 1, err
    assert json.loads(out)["receivers"]["delivered"] == 0
    assert "Traceback" not in err
    delivery = ReceiverDelivery.objects.get()
    assert delivery.delivered_at is None and delivery.given_up_at is None
    assert rows() == ["steady"]
    FLAKY["kill_connection"] = False

    assert run()[0] == 0
    assert rows() == ["flaky", "steady"]
