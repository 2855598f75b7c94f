"""Crash safety with real processes: ``athm_sync`` killed with SIGKILL at seeded random moments.

Each child is a real ``python -m django athm_sync`` on the test database (SQLite file or
PostgreSQL), against the session's sandbox, with the test shop's receivers
(``tests.shop``): ``instant`` writes a ``Fulfilment`` row per signal, ``slow`` sleeps 20 ms
first, so many kills land inside a receiver. After the kills one run recovers (in this
process, its clock moved past the dead runs' claims), and every transition must have exactly
one row: none lost, none doubled.

``ATHM_TEST_KILLS`` (default 30 per database and receiver) and ``ATHM_TEST_KILL_SEED`` set the
number of kills and the seed; a failure prints the seed to replay it.
"""

from __future__ import annotations

import json
import logging
import os
import random
import signal
import subprocess
import threading
from collections import Counter
from datetime import timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from django.db import connection
from django.db.models import Q

from athm_sync import clock, reconcile, signals
from athm_sync.models import Payment, PaymentEvent
from athm_sync.sandbox import SandboxServer
from tests.commands import call
from tests.shop import apps as shop
from tests.shop.models import Fulfilment
from tests.test_overlap import child_env, first_call, start_child

pytestmark = pytest.mark.django_db(transaction=True)

KILLS = int(os.environ.get("ATHM_TEST_KILLS", "30"))
SEED = int(os.environ.get("ATHM_TEST_KILL_SEED", "20261201"))
# A child needs about 0.3 s to start Django; kill moments fall in the work after that.
KILL_WINDOW = (0.3, 1.3)
BATCH = 120
SIGNAL_OF = {
    "completed": "payment_completed",
    "cancelled": "payment_cancelled",
    "expired": "payment_expired",
    "refund_sent": "refund_sent",
}


def settled_at_ath(sandbox: SandboxServer, count: int) -> None:
    """``count`` tracked payments the customers already acted on: each check is a transition.
    Of every five, three complete, one is cancelled and one completes and is refunded."""
    for n in range(count):
        ecommerce_id, _ = sandbox.create_payment(total="5.00")
        if n % 5 == 3:
            sandbox.cancel(ecommerce_id)
        else:
            sandbox.complete(ecommerce_id)
        if n % 5 == 4:
            sandbox.refund(ecommerce_id, "2.00")
        Payment.objects.track(ecommerce_id, total=Decimal("5.00"))


def claimable() -> int:
    now = clock.now()
    free = Q(claimed_until__isnull=True) | Q(claimed_until__lt=now)
    return Payment.objects.due(now).filter(free).count()


def recover(receiver: str, time_machine: Any) -> None:
    """What the next scheduled run does, once the dead runs' 45 s claims have run out."""
    time_machine.move_to(clock.now() + reconcile.CLAIM_LEASE + timedelta(seconds=1))
    shop.connect(receiver)
    try:
        for _ in range(3):  # PostgreSQL may still hold a killed backend's locks a moment
            code, _, err = call("athm_sync", "--json")
            assert code == 0, err
            if not PaymentEvent.objects.filter(dispatched_at__isnull=True).exists():
                break
    finally:
        shop.disconnect()


def tally() -> dict[str, int]:
    """Transitions without their shop row, and rows beyond one per transition."""
    rows = Counter(Fulfilment.objects.values_list("payment_id", "kind"))
    events = Counter(
        (payment_id, SIGNAL_OF[kind])
        for payment_id, kind in PaymentEvent.objects.values_list("payment_id", "kind")
    )
    return {
        "transitions": sum(events.values()),
        "rows": sum(rows.values()),
        "lost": sum(1 for key in events if rows[key] == 0),
        "doubled": sum(rows[key] - 1 for key in rows if rows[key] > 1),
        "rows_without_transition": sum(1 for key in rows if key not in events),
        "events_twice": sum(n - 1 for n in events.values() if n > 1),
        "unsent": PaymentEvent.objects.filter(dispatched_at__isnull=True).count(),
    }


@pytest.mark.parametrize("receiver", ["instant", "slow"])
def test_sigkill_at_random_moments_loses_and_doubles_nothing(
    athm_settings: SandboxServer, receiver: str, tmp_path: Path, time_machine: Any
) -> None:
    sandbox = athm_settings
    sandbox.set_latency(0.002)
    seed = f"{SEED}-{connection.vendor}-{receiver}"
    rng = random.Random(seed)
    env = {**child_env(sandbox, tmp_path / "signals.log"), shop.RECEIVER_ENV: receiver}
    kills = runs = 0
    killed_in_receiver_window = 0
    while kills < KILLS:
        if claimable() < BATCH // 2:
            settled_at_ath(sandbox, BATCH)
        child = start_child(env)
        runs += 1
        try:
            child.wait(timeout=rng.uniform(*KILL_WINDOW))  # the run ended before its moment
        except subprocess.TimeoutExpired:
            child.send_signal(signal.SIGKILL)
            kills += 1
            killed_in_receiver_window += Fulfilment.objects.filter(pid=child.pid).exists()
        child.communicate(timeout=30)

    before = tally()
    recover(receiver, time_machine)
    after = tally()

    print(f"\n{connection.vendor} {receiver}: {runs} runs, {kills} kills (seed {seed}),")
    print(f"  before recovery {before}\n  after recovery  {after}")
    assert killed_in_receiver_window > 0, "no kill fell while signals were being sent"
    assert after["transitions"] > 0 and after["unsent"] == 0, (seed, after)
    assert (after["lost"], after["doubled"], after["events_twice"]) == (0, 0, 0), (seed, after)
    assert after["rows_without_transition"] == 0, (seed, after)
    assert after["rows"] == after["transitions"], (seed, after)
    assert not Payment.objects.active().exists()


def test_a_dead_runs_payments_are_checked_again_within_a_minute(
    athm_settings: SandboxServer, tmp_path: Path, time_machine: Any
) -> None:
    """A run killed while it holds claims: its payments are free again ``CLAIM_LEASE`` (45 s)
    after its last claim or renewal, and the next run checks them."""
    sandbox = athm_settings
    settled_at_ath(sandbox, 10)
    sandbox.set_latency(5.0)  # the child's calls hang, its claims held, until it is killed
    with first_call(sandbox) as asked:
        child = start_child(child_env(sandbox, tmp_path / "signals.log"))
        try:
            assert asked.wait(timeout=30), "the child never asked ATH Móvil"
        finally:
            child.send_signal(signal.SIGKILL)
            child.communicate(timeout=30)
    sandbox.set_latency(0)
    killed_at = clock.now()

    held = Payment.objects.exclude(claimed_by="")
    assert held.count() == 10
    assert max(held.values_list("claimed_until", flat=True)) <= killed_at + reconcile.CLAIM_LEASE
    time_machine.move_to(killed_at + reconcile.CLAIM_LEASE - timedelta(seconds=5), tick=False)
    assert json.loads(call("athm_sync", "--json")[1])["checked"] == 0  # still within the lease
    time_machine.move_to(killed_at + reconcile.CLAIM_LEASE + timedelta(seconds=1), tick=False)
    summary = json.loads(call("athm_sync", "--json")[1])
    assert summary["checked"] == 10 and summary["exit_code"] == 0


def test_a_live_runs_claims_are_renewed_while_it_lives(athm_settings: SandboxServer) -> None:
    settled_at_ath(athm_settings, 3)
    claimed = reconcile.claim_due("slow-run", limit=10, lease=timedelta(seconds=1))
    first = {p.pk: p.claimed_until for p in Payment.objects.all()}

    with reconcile.LeaseKeeper("slow-run", lease=timedelta(seconds=0.3)) as keeper:
        assert keeper.renewed.wait(timeout=10)

    renewed = {p.pk: p.claimed_until for p in Payment.objects.all()}
    assert len(claimed) == 3
    assert all(renewed[pk] != first[pk] for pk in first)  # extended by the live run
    assert set(Payment.objects.values_list("claimed_by", flat=True)) == {"slow-run"}


# -- receivers that fail -----------------------------------------------------------------------


def test_a_receiver_raising_integrity_error_is_rolled_back_alone(athm_settings, caplog):
    """Between two good receivers, one that writes a row and then breaks the transaction: its
    row is rolled back, it is logged once and recorded on the event, the other two commit."""
    sandbox = athm_settings
    settled_at_ath(sandbox, 1)
    payment = Payment.objects.get()

    def first(sender, payment, **kwargs):
        shop.fulfil("first", payment)

    def broken(sender, payment, **kwargs):
        shop.fulfil("broken", payment)
        Payment.objects.create(ecommerce_id=payment.pk, total=Decimal("1.00"))  # a second row

    def last(sender, payment, **kwargs):
        shop.fulfil("last", payment)

    receivers = [first, broken, last]
    for receiver in receivers:
        signals.payment_completed.connect(receiver, weak=False)
    try:
        with caplog.at_level(logging.ERROR):
            code, out, _ = call("athm_sync", "--json")
    finally:
        for receiver in receivers:
            signals.payment_completed.disconnect(receiver)

    summary = json.loads(out)
    assert code == 1 and summary["receiver_errors"] == 1 and summary["signals_sent"] == 1
    assert sorted(Fulfilment.objects.values_list("kind", flat=True)) == ["first", "last"]
    event = PaymentEvent.objects.get()
    assert event.dispatched_at is not None and event.receiver_errors == 1
    (error,) = event.errors
    assert error["receiver"].endswith("broken") and error["error"].startswith("IntegrityError")
    failed = [r for r in caplog.records if "broken" in r.getMessage()]
    assert len(failed) == 1 and "IntegrityError: " in failed[0].getMessage()  # its traceback
    assert str(payment.pk) in failed[0].getMessage()
    assert Payment.objects.get().status == "COMPLETED"


# -- a database that refuses the outbox ------------------------------------------------------


@pytest.fixture
def refuse_event_writes(db):
    """A trigger that makes the database refuse ``operation`` (INSERT or UPDATE) on the outbox
    table, as a revoked privilege or a full disk would."""
    table = PaymentEvent._meta.db_table
    installed = []

    def install(operation: str) -> None:
        with connection.cursor() as cursor:
            if connection.vendor == "postgresql":
                cursor.execute(
                    "CREATE FUNCTION athm_test_refuse_events() RETURNS trigger AS $$ BEGIN "
                    f"RAISE EXCEPTION 'permission denied for table {table}'; END $$ "
                    "LANGUAGE plpgsql"
                )
                cursor.execute(
                    f"CREATE TRIGGER athm_test_refuse_events BEFORE {operation} ON {table} "
                    "FOR EACH ROW EXECUTE FUNCTION athm_test_refuse_events()"
                )
            else:
                cursor.execute(
                    f"CREATE TRIGGER athm_test_refuse_events BEFORE {operation} ON {table} "
                    f"BEGIN SELECT RAISE(ABORT, 'permission denied for table {table}'); END"
                )
        installed.append(operation)

    def remove() -> None:
        with connection.cursor() as cursor:
            on = f" ON {table}" if connection.vendor == "postgresql" else ""
            cursor.execute(f"DROP TRIGGER IF EXISTS athm_test_refuse_events{on}")
            if connection.vendor == "postgresql":
                cursor.execute("DROP FUNCTION IF EXISTS athm_test_refuse_events()")
        installed.clear()

    install.remove = remove  # type: ignore[attr-defined]
    yield install
    if installed:
        remove()


@pytest.mark.parametrize("operation", ["INSERT", "UPDATE"])
def test_a_database_that_refuses_the_outbox_fails_the_run_in_one_line(
    athm_settings, received, refuse_event_writes, time_machine, operation
):
    """INSERT refused: the transitions cannot be recorded (they stay to be checked again).
    UPDATE refused: they are recorded but their signals cannot be marked sent (they stay
    pending). Either way the run exits 1 and says so; nothing is lost once the database
    accepts again."""
    sandbox = athm_settings
    settled_at_ath(sandbox, 3)  # three completions
    refuse_event_writes(operation)

    code, out, err = call("athm_sync")

    assert code == 1 and "Traceback" not in err and "Traceback" not in out
    assert "errors: 3" in out and "permission denied" in out
    assert received == []
    refuse_event_writes.remove()
    time_machine.move_to(clock.now() + reconcile.FIRST_RETRY, tick=False)  # past the backoff
    shop.connect("instant")
    try:
        code, out, err = call("athm_sync", "--json")
        again = json.loads(call("athm_sync", "--json")[1])
    finally:
        shop.disconnect()
    assert code == 0, out + err
    assert again["checked"] == 0 and again["signals_sent"] == 0
    outcome = tally()
    assert (outcome["lost"], outcome["doubled"], outcome["unsent"]) == (0, 0, 0), outcome
    assert outcome["rows"] == outcome["transitions"] == 3
    assert len(received) == 3


# -- two live processes ------------------------------------------------------------------------


def test_a_run_starting_while_another_sends_sees_no_leftovers(
    athm_settings: SandboxServer, tmp_path: Path
) -> None:
    """The second run starts while the first is sending signals (slow receivers): it sends
    nothing twice and warns of no leftover, since nothing crashed."""
    sandbox = athm_settings
    settled_at_ath(sandbox, 150)
    env = {**child_env(sandbox, tmp_path / "signals.log"), shop.RECEIVER_ENV: "slow"}
    children: list[subprocess.Popen] = []
    started = threading.Event()
    calls = Counter[str]()
    real_data = sandbox.state.payment_data

    def payment_data(*args: Any, **kwargs: Any) -> Any:
        calls["find"] += 1
        if calls["find"] == 20 and not started.is_set():  # the first run is sending by now
            children.append(start_child(env))
            started.set()
        return real_data(*args, **kwargs)

    sandbox.state.payment_data = payment_data  # type: ignore[method-assign]
    try:
        children.append(start_child(env))
        first_out, first_err = children[0].communicate(timeout=60)
        assert started.wait(timeout=60)
        second_out, second_err = children[1].communicate(timeout=60)
    finally:
        sandbox.state.payment_data = real_data  # type: ignore[method-assign]
        for child in children:
            if child.poll() is None:
                child.kill()

    assert [child.returncode for child in children] == [0, 0], (first_err, second_err)
    for stderr in (first_err, second_err):
        assert "left unsent" not in stderr, stderr
    outcome = tally()
    assert outcome["lost"] == outcome["doubled"] == outcome["unsent"] == 0, outcome
    assert outcome["rows"] == outcome["transitions"] == 180  # 150 payments, 30 refunds
    runs = [json.loads(first_out), json.loads(second_out)]
    assert [run["redispatched"] for run in runs] == [0, 0]
    assert sum(run["signals_sent"] for run in runs) == 180
    if connection.vendor == "postgresql":  # SQLite's one writer may leave the second run idle
        pids = set(Fulfilment.objects.values_list("pid", flat=True))
        assert len(pids) == 2, ("the second run did none of the work", runs)
