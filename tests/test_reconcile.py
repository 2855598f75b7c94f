"""The transition function (athm_sync.reconcile) end to end against the sandbox ATH Móvil.

Every test goes through the real HTTP client, the real sandbox and the real database; time is
driven with time-machine (which moves the sandbox's clock too) and ``sandbox.advance``.
Transactions really commit (``transaction=True``), so signals fire after commit as in production.
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import replace
from datetime import timedelta
from decimal import Decimal
from types import SimpleNamespace

import pytest
from django.db import OperationalError, connection, transaction
from django.dispatch import receiver

import athm_sync
from athm_sync import clock, database, reconcile, signals
from athm_sync.client import ATHMovilClient
from athm_sync.models import Payment, PaymentEvent, Refund
from athm_sync.normalize import local_datetime
from athm_sync.sandbox.formats import BUSINESS_NAME

pytestmark = pytest.mark.django_db(transaction=True)

S = Payment.Status
seed_logger = logging.getLogger(__name__)


# -- fixtures and helpers ------------------------------------------------------------------


@pytest.fixture
def athm(athm_settings):
    """The sandbox, with ATHM_SYNC pointed at it."""
    return athm_settings


@pytest.fixture
def no_capture(athm, settings):
    settings.ATHM_SYNC = {**settings.ATHM_SYNC, "AUTO_CAPTURE": False}
    return athm


@pytest.fixture
def client(athm):
    with ATHMovilClient.from_settings() as client:
        yield client


def names(calls) -> list[str]:
    return [name for name, _, _ in calls]


def create(total="10.00", **kwargs) -> Payment:
    """A payment created server-side: ATH Móvil's auth token is stored for capture."""
    return Payment.objects.create_via_api(total=total, **kwargs)


def track(sandbox, total="10.00", timeout=600) -> Payment:
    """A payment the JavaScript button created: tracked by id, no auth token."""
    ecommerce_id, _ = sandbox.create_payment(total, timeout=timeout)
    return Payment.objects.track(ecommerce_id, total=total, timeout=timeout)


def reload(payment: Payment) -> Payment:
    return Payment.objects.get(pk=payment.pk)


def sweep() -> tuple[int, int]:
    """The run's sweep of the outbox: (signals sent, receivers that raised)."""
    dispatched = reconcile.dispatch_pending()
    return dispatched.sent, dispatched.receiver_errors


def later(seconds: float):
    return clock.now() + timedelta(seconds=seconds)


# -- the mapping table, one row each -------------------------------------------------------


def test_open_stays_open_and_fires_nothing(athm, received):
    payment = create()

    outcome = athm_sync.sync_payment(str(payment.pk))

    assert outcome.payment.status == reload(payment).status == S.OPEN
    assert not outcome.changed and outcome.events == []
    assert received == []
    assert not PaymentEvent.objects.exists()
    assert reload(payment).check_count == 1


def test_confirm_stays_confirm_without_auto_capture(no_capture, received):
    sandbox = no_capture
    payment = create()
    sandbox.confirm(str(payment.pk), name="Ana Ruiz", phone="(787) 555-1234")
    sandbox.reset_counts()

    athm_sync.sync_payment(payment.pk)

    stored = reload(payment)
    assert stored.status == S.CONFIRM
    assert stored.customer_name == "Ana Ruiz" and stored.customer_phone == "7875551234"
    assert stored.auth_token == payment.auth_token != ""  # kept for when capture is wanted
    assert sandbox.counts()["authorization"] == 0
    assert sandbox.payment(str(payment.pk))["status"] == "CONFIRM"
    assert received == []


def test_completed_fires_payment_completed_with_the_remote_fields(athm, received):
    sandbox = athm
    payment = create(total="10.00", metadata_1="order-1")
    sandbox.complete(
        str(payment.pk), name="Ana Ruiz", phone="(787) 555-1234", email="ana@example.com"
    )
    remote = sandbox.payment(str(payment.pk))

    outcome = athm_sync.sync_payment(payment.pk)

    stored = reload(payment)
    assert stored.status == S.COMPLETED
    assert stored.reference_number == remote["referenceNumber"] != ""
    assert stored.daily_transaction_id == remote["dailyTransactionId"] != ""
    assert stored.fee == Decimal(remote["fee"]) == Decimal("0.35")
    assert stored.net_amount == Decimal(remote["netAmount"]) == Decimal("9.65")
    assert stored.customer_name == "Ana Ruiz"
    assert stored.customer_phone == "7875551234"
    assert stored.customer_email == "ana@example.com"
    assert stored.business_name == BUSINESS_NAME
    assert stored.metadata_1 == "order-1"
    assert stored.transaction_date == local_datetime(remote["transactionDate"])
    assert stored.transaction_date.utcoffset() == timedelta(0)
    assert abs(stored.transaction_date - sandbox.now()) < timedelta(seconds=5)
    assert stored.auth_token == ""
    assert not Payment.objects.due(later(86400)).filter(pk=payment.pk).exists()

    assert names(received) == ["payment_completed"]
    _, sender, kwargs = received[0]
    assert sender is Payment and set(kwargs) == {"payment"}
    assert kwargs["payment"].pk == payment.pk and kwargs["payment"].status == S.COMPLETED
    assert kwargs["payment"].reference_number == remote["referenceNumber"]
    assert (outcome.signals_sent, outcome.receiver_errors) == (1, 0)
    event = PaymentEvent.objects.get()
    assert (event.kind, event.from_status, event.to_status, event.source) == (
        "completed",
        "OPEN",
        "COMPLETED",
        "sync_payment",
    )
    assert event.dispatched_at is not None


def test_cancel_before_the_deadline_is_cancelled(athm, received):
    sandbox = athm
    payment = create()
    sandbox.cancel(str(payment.pk))

    athm_sync.sync_payment(payment.pk)

    assert reload(payment).status == S.CANCEL
    assert names(received) == ["payment_cancelled"]
    assert received[0][1] is Payment and received[0][2]["payment"].pk == payment.pk


def test_cancel_seen_after_the_deadline_is_expired(athm, received, time_machine):
    sandbox = athm
    payment = create(timeout=120)
    time_machine.move_to(payment.created_at + timedelta(seconds=125), tick=False)
    assert sandbox.payment(str(payment.pk))["status"] == "CANCEL"  # ATH Móvil says CANCEL

    athm_sync.sync_payment(payment.pk)

    assert reload(payment).status == S.EXPIRED
    assert names(received) == ["payment_expired"]
    assert received[0][1] is Payment and received[0][2]["payment"].status == S.EXPIRED


@pytest.mark.parametrize(
    ("hint", "seen_at", "status", "signal"),
    [
        # Near the deadline the hint breaks findPayment's tie, within HINT_ALLOWANCE (30 s):
        # a cancel 1 s before the deadline whose webhook is verified 20 s after it...
        ("cancelled", 20, S.CANCEL, "payment_cancelled"),
        # ...and an expiry ATH Móvil's clock saw 20 s before ours.
        ("expired", -20, S.EXPIRED, "payment_expired"),
        # Anywhere else the deadline decides, whatever the webhook says: a forged "expired"
        # cannot turn a cancellation 1 s into a 600 s payment into an expiry...
        ("expired", -599, S.CANCEL, "payment_cancelled"),
        ("expired", -31, S.CANCEL, "payment_cancelled"),
        # ...nor a forged "cancelled" an expiry into a cancellation.
        ("cancelled", 30, S.EXPIRED, "payment_expired"),
        ("cancelled", 3600, S.EXPIRED, "payment_expired"),
    ],
)
def test_a_webhook_hint_decides_only_near_the_deadline(
    athm, received, time_machine, caplog, hint, seen_at, status, signal
):
    sandbox = athm
    payment = create(timeout=600)
    sandbox.cancel(str(payment.pk))  # findPayment says CANCEL from now on, either way
    time_machine.move_to(payment.expires_at + timedelta(seconds=seen_at), tick=False)

    with caplog.at_level(logging.WARNING, logger="athm_sync.reconcile"):
        reconcile.check_payment(payment.pk, hint=hint, source="webhook")

    assert reload(payment).status == status
    assert names(received) == [signal]
    assert PaymentEvent.objects.get().source == "webhook"
    overruled = status.lower() not in hint
    assert (f"a webhook says {hint}" in caplog.text) is overruled


def test_refunds_become_refund_rows_and_refund_sent(athm, received):
    sandbox = athm
    payment = create(total="10.00")
    sandbox.complete(str(payment.pk))
    athm_sync.sync_payment(payment.pk)
    received.clear()

    sandbox.refund(str(payment.pk), "2.50", "one item")
    outcome = athm_sync.sync_payment(payment.pk)

    refund = Refund.objects.get()
    assert refund.payment_id == payment.pk and refund.amount == Decimal("2.50")
    assert refund.reference_number == reload(payment).reference_number != ""
    assert reload(payment).total_refunded_amount == Decimal("2.50")
    assert reload(payment).status == S.COMPLETED
    assert outcome.signals_sent == 1
    assert names(received) == ["refund_sent"]
    _, sender, kwargs = received[0]
    assert sender is Refund and set(kwargs) == {"refund", "payment"}
    assert kwargs["refund"].pk == refund.pk and kwargs["refund"].amount == Decimal("2.50")
    assert kwargs["payment"].pk == payment.pk

    sandbox.refund(str(payment.pk), "1.00")
    athm_sync.sync_payment(payment.pk)
    athm_sync.sync_payment(payment.pk)  # nothing new: no third refund

    assert [r.amount for r in payment.refunds.order_by("id")] == [
        Decimal("2.50"),
        Decimal("1.00"),
    ]
    assert reload(payment).total_refunded_amount == Decimal("3.50")
    assert names(received) == ["refund_sent", "refund_sent"]
    assert received[1][2]["refund"].amount == Decimal("1.00")


def test_completed_and_refunded_between_two_checks_fires_both_in_order(athm, received):
    sandbox = athm
    payment = track(sandbox)
    sandbox.complete(str(payment.pk))
    sandbox.refund(str(payment.pk), "4.00")

    athm_sync.sync_payment(payment.pk)

    assert names(received) == ["payment_completed", "refund_sent"]
    assert Refund.objects.get().amount == Decimal("4.00")
    assert reload(payment).status == S.COMPLETED


# -- capture on CONFIRM --------------------------------------------------------------------


def test_a_confirmed_payment_with_a_token_is_captured(athm, received):
    sandbox = athm
    payment = create(total="20.00")
    assert payment.auth_token
    sandbox.confirm(str(payment.pk))
    sandbox.reset_counts()

    outcome = athm_sync.sync_payment(payment.pk)

    assert sandbox.counts()["authorization"] == 1
    assert sandbox.payment(str(payment.pk))["status"] == "COMPLETED"
    stored = reload(payment)
    assert stored.status == S.COMPLETED and stored.auth_token == ""
    assert stored.reference_number == sandbox.payment(str(payment.pk))["referenceNumber"]
    assert stored.fee == Decimal("0.60")
    assert names(received) == ["payment_completed"]
    assert outcome.signals_sent == 1

    athm_sync.sync_payment(payment.pk)
    assert sandbox.counts()["authorization"] == 1
    assert names(received) == ["payment_completed"]


def test_an_expired_token_is_not_used_and_is_dropped(athm, client, received):
    sandbox = athm
    payment = create()
    sandbox.confirm(str(payment.pk))
    sandbox.reset_counts()

    # The token's 15 minutes are over (from our clock's point of view).
    observation = reconcile.observe(client, payment.pk, payment.auth_token, now=later(16 * 60))
    reconcile.apply(observation)

    assert sandbox.counts()["authorization"] == 0
    stored = reload(payment)
    assert stored.status == S.CONFIRM and stored.auth_token == ""
    assert sandbox.payment(str(payment.pk))["status"] == "CONFIRM"
    assert received == []


def test_a_rejected_token_is_dropped_and_the_payment_waits(athm, received):
    sandbox = athm
    ecommerce_id, _ = sandbox.create_payment("10.00")
    payment = Payment.objects.track(ecommerce_id, total="10.00", auth_token="not-a-jwt")
    sandbox.confirm(ecommerce_id)
    sandbox.reset_counts()

    athm_sync.sync_payment(payment.pk)

    assert sandbox.counts()["authorization"] == 1  # tried, ATH Móvil refused it
    stored = reload(payment)
    assert stored.status == S.CONFIRM and stored.auth_token == ""
    assert received == []

    athm_sync.sync_payment(payment.pk)  # no token left: no second try
    assert sandbox.counts()["authorization"] == 1


def test_auto_capture_off_never_calls_authorization(no_capture, received):
    sandbox = no_capture
    payment = create()
    sandbox.confirm(str(payment.pk))
    sandbox.reset_counts()

    for _ in range(3):
        athm_sync.sync_payment(payment.pk)

    assert sandbox.counts()["authorization"] == 0
    assert sandbox.counts()["findPayment"] == 3
    assert reload(payment).status == S.CONFIRM
    assert received == []


# -- once and only once --------------------------------------------------------------------


def test_three_checks_in_a_row_fire_each_signal_once(athm, received):
    sandbox = athm
    completed, cancelled = create(), create()
    sandbox.complete(str(completed.pk))
    sandbox.cancel(str(cancelled.pk))

    for _ in range(3):
        athm_sync.sync_payment(completed.pk)
        athm_sync.sync_payment(cancelled.pk)

    assert sorted(names(received)) == ["payment_cancelled", "payment_completed"]
    assert PaymentEvent.objects.filter(payment=completed).count() == 1
    assert PaymentEvent.objects.filter(payment=cancelled).count() == 1
    assert reload(completed).check_count == 3


def test_receivers_written_as_on_the_seed_page(athm, caplog, time_machine):
    """The four receivers of signals.md, as written there but for the import path."""
    sandbox = athm
    calls = []

    @receiver(signals.payment_completed)
    def on_payment_completed(sender, payment, **kwargs):
        seed_logger.info(f"Payment completed: {payment.reference_number}")
        calls.append(("completed", sender, payment))

    @receiver(signals.payment_cancelled)
    def on_payment_cancelled(sender, payment, **kwargs):
        seed_logger.warning(f"Payment cancelled: {payment.ecommerce_id}")
        calls.append(("cancelled", sender, payment))

    @receiver(signals.payment_expired)
    def on_payment_expired(sender, payment, **kwargs):
        seed_logger.warning(f"Payment expired: {payment.ecommerce_id}")
        calls.append(("expired", sender, payment))

    @receiver(signals.refund_sent)
    def on_refund_sent(sender, refund, payment, **kwargs):
        seed_logger.info(f"Refund sent: ${refund.amount} for {payment.reference_number}")
        calls.append(("refund", sender, refund, payment))

    try:
        caplog.set_level(logging.INFO, logger=__name__)
        paid, walked_away, expiring = create(), create(), create(timeout=120)
        sandbox.complete(str(paid.pk))
        sandbox.refund(str(paid.pk), "1.50")
        sandbox.cancel(str(walked_away.pk))
        athm_sync.sync_payment(paid.pk)
        athm_sync.sync_payment(walked_away.pk)
        time_machine.move_to(expiring.created_at + timedelta(seconds=130), tick=False)
        athm_sync.sync_payment(expiring.pk)
    finally:
        signals.payment_completed.disconnect(on_payment_completed)
        signals.payment_cancelled.disconnect(on_payment_cancelled)
        signals.payment_expired.disconnect(on_payment_expired)
        signals.refund_sent.disconnect(on_refund_sent)

    assert [call[0] for call in calls] == ["completed", "refund", "cancelled", "expired"]
    reference = reload(paid).reference_number
    _, sender, payment = calls[0]
    assert sender is Payment and isinstance(payment, Payment) and payment.pk == paid.pk
    _, sender, refund, payment = calls[1]
    assert sender is Refund and isinstance(refund, Refund) and refund.amount == Decimal("1.50")
    assert isinstance(payment, Payment) and payment.pk == paid.pk == refund.payment_id
    assert calls[2][1] is Payment and calls[2][2].pk == walked_away.pk
    assert calls[3][1] is Payment and calls[3][2].pk == expiring.pk
    messages = [r.getMessage() for r in caplog.records if r.name == __name__]
    assert messages == [
        f"Payment completed: {reference}",
        f"Refund sent: $1.50 for {reference}",
        f"Payment cancelled: {walked_away.pk}",
        f"Payment expired: {expiring.pk}",
    ]


def test_a_receiver_that_raises_neither_stops_the_others_nor_the_transition(athm, received, caplog):
    sandbox = athm
    after = []

    def broken(sender, payment, **kwargs):
        raise RuntimeError("the shop's mail server is down")

    def later_receiver(sender, payment, **kwargs):
        after.append(payment.pk)

    signals.payment_completed.connect(broken, weak=False, dispatch_uid="test-broken")
    signals.payment_completed.connect(later_receiver, weak=False, dispatch_uid="test-after")
    try:
        payment = create()
        sandbox.complete(str(payment.pk))
        with caplog.at_level(logging.ERROR, logger="athm_sync.reconcile"):
            outcome = athm_sync.sync_payment(payment.pk)
    finally:
        signals.payment_completed.disconnect(dispatch_uid="test-broken")
        signals.payment_completed.disconnect(dispatch_uid="test-after")

    assert after == [payment.pk]
    assert names(received) == ["payment_completed"]
    assert reload(payment).status == S.COMPLETED
    assert (outcome.signals_sent, outcome.receiver_errors) == (1, 1)
    event = PaymentEvent.objects.get()
    assert event.receiver_errors == 1 and event.dispatched_at is not None
    errors = [r for r in caplog.records if r.name == "athm_sync.reconcile"]
    assert len(errors) == 1 and errors[0].levelno == logging.ERROR
    assert str(payment.pk) in errors[0].getMessage()
    assert "Traceback (most recent call last):" in errors[0].getMessage()
    assert "\nRuntimeError: " in errors[0].getMessage()  # the traceback, as stored (masked)
    assert "the shop's mail server is down" in caplog.text
    assert "Traceback" in caplog.text

    athm_sync.sync_payment(payment.pk)  # the failed receiver is not retried forever
    assert after == [payment.pk]


def test_a_crash_between_commit_and_dispatch_is_sent_by_the_next_run(athm, received, monkeypatch):
    sandbox = athm
    payment = create()
    sandbox.complete(str(payment.pk))
    sandbox.refund(str(payment.pk), "1.00")

    with monkeypatch.context() as crash:
        # The process dies right after COMMIT: the after-commit dispatch never runs.
        crash.setattr(reconcile.transaction, "on_commit", lambda *args, **kwargs: None)
        athm_sync.sync_payment(payment.pk)

    assert reload(payment).status == S.COMPLETED
    events = list(PaymentEvent.objects.order_by("id"))
    assert [e.kind for e in events] == ["completed", "refund_sent"]
    assert all(e.dispatched_at is None for e in events)
    assert received == []

    # The next check of this payment changes nothing and so sends nothing itself...
    athm_sync.sync_payment(payment.pk)
    assert received == []
    # ...the run's sweep of the outbox does, once.
    assert sweep() == (2, 0)
    assert names(received) == ["payment_completed", "refund_sent"]
    assert received[1][1] is Refund and received[1][2]["payment"].pk == payment.pk
    assert not PaymentEvent.objects.filter(dispatched_at__isnull=True).exists()

    assert sweep() == (0, 0)
    assert names(received) == ["payment_completed", "refund_sent"]


@pytest.mark.parametrize("crash", ["dropped after commit", "dispatch raised"])
def test_events_a_failed_dispatch_left_are_sent_by_the_sweep(athm, received, monkeypatch, crash):
    sandbox = athm
    payment = create()
    sandbox.complete(str(payment.pk))
    real_dispatch = reconcile.dispatch
    failed = []

    def dispatch_that_dies_once(event_ids):
        if not failed:
            failed.append(list(event_ids))
            raise OperationalError("server closed the connection unexpectedly")
        return real_dispatch(event_ids)

    with monkeypatch.context() as crashing:
        if crash == "dropped after commit":
            crashing.setattr(reconcile.transaction, "on_commit", lambda *args, **kwargs: None)
        else:
            crashing.setattr(reconcile, "dispatch", dispatch_that_dies_once)
        outcome = athm_sync.sync_payment(payment.pk)
        # The transition stands; nothing was sent, nothing claims to have been.
        assert reload(payment).status == S.COMPLETED
        assert outcome.signals_sent == 0 and received == []
        assert PaymentEvent.objects.get().dispatched_at is None
        assert sweep() == (1, 0)

    assert names(received) == ["payment_completed"]
    assert sweep() == (0, 0)
    athm_sync.sync_payment(payment.pk)
    assert names(received) == ["payment_completed"]


def test_an_api_failure_changes_nothing_and_is_recorded(athm, received):
    sandbox = athm
    payment = create()
    sandbox.complete(str(payment.pk))
    sandbox.inject_fault("garbage", "findPayment", times=10)

    outcome = athm_sync.sync_payment(payment.pk)

    stored = reload(payment)
    assert stored.status == S.OPEN and not outcome.changed
    assert stored.last_error != "" and stored.next_check_at is not None
    assert received == []

    sandbox.clear_faults()
    athm_sync.sync_payment(payment.pk)
    stored = reload(payment)
    assert stored.status == S.COMPLETED and stored.last_error == ""
    assert names(received) == ["payment_completed"]


def test_a_hint_the_api_does_not_bear_out_changes_nothing(athm, received):
    """A forged (or early) webhook: findPayment is the truth."""
    sandbox = athm
    open_payment, paid = create(), create()
    sandbox.complete(str(paid.pk))
    athm_sync.sync_payment(paid.pk)
    received.clear()

    reconcile.check_payment(open_payment.pk, hint="expired", source="webhook")
    reconcile.check_payment(paid.pk, hint="cancelled", source="webhook")

    assert reload(open_payment).status == S.OPEN
    assert reload(paid).status == S.COMPLETED
    assert received == []


def test_a_sync_of_an_unknown_or_malformed_id_raises(athm):
    with pytest.raises(Payment.DoesNotExist):
        athm_sync.sync_payment(uuid.uuid4())
    with pytest.raises(ValueError, match="UUID"):
        athm_sync.sync_payment("order-17")


# -- no transition goes backwards ----------------------------------------------------------


@pytest.mark.parametrize("remote_status", ["CANCEL", "OPEN", "CONFIRM"])
def test_a_completed_payment_never_goes_back(athm, client, received, caplog, remote_status):
    sandbox = athm
    payment = create()
    sandbox.complete(str(payment.pk))
    athm_sync.sync_payment(payment.pk)
    received.clear()
    snapshot = client.find_payment(payment.pk)

    with caplog.at_level(logging.WARNING, logger="athm_sync.reconcile"):
        outcome = reconcile.apply(
            reconcile.Observation(payment.pk, snapshot=replace(snapshot, status=remote_status))
        )

    assert reload(payment).status == S.COMPLETED
    assert not outcome.changed and received == []
    assert PaymentEvent.objects.count() == 1
    if remote_status == "CANCEL":  # money and the outcome disagree: someone must look
        assert "already COMPLETED" in caplog.text


def test_a_confirmed_payment_seen_open_stays_confirmed(no_capture, client, received):
    sandbox = no_capture
    payment = create()
    sandbox.confirm(str(payment.pk))
    athm_sync.sync_payment(payment.pk)
    snapshot = client.find_payment(payment.pk)

    reconcile.apply(reconcile.Observation(payment.pk, snapshot=replace(snapshot, status="OPEN")))

    assert reload(payment).status == S.CONFIRM
    assert received == []


def test_an_expired_payment_seen_completed_stays_expired_with_a_warning(
    athm, client, received, caplog, time_machine
):
    sandbox = athm
    payment = create(timeout=120)
    time_machine.move_to(payment.created_at + timedelta(seconds=130), tick=False)
    athm_sync.sync_payment(payment.pk)
    assert reload(payment).status == S.EXPIRED
    received.clear()
    paid = create()
    sandbox.complete(str(paid.pk))
    completed = client.find_payment(paid.pk)  # a real COMPLETED answer, for our payment's id

    with caplog.at_level(logging.WARNING, logger="athm_sync.reconcile"):
        outcome = reconcile.apply(
            reconcile.Observation(payment.pk, snapshot=replace(completed, ecommerce_id=payment.pk))
        )

    assert reload(payment).status == S.EXPIRED
    assert not outcome.changed and received == []
    assert PaymentEvent.objects.filter(payment=payment).count() == 1
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert any("COMPLETED" in r.getMessage() and "EXPIRED" in r.getMessage() for r in warnings)


# -- a payment ATH Móvil never saw ---------------------------------------------------------


def test_a_payment_ath_movil_never_knew_expires_after_the_grace(
    athm, received, caplog, time_machine
):
    payment = Payment.objects.track(uuid.uuid4(), total="10.00", timeout=300)
    grace = timedelta(minutes=10)  # the default EXPIRY_GRACE

    athm_sync.sync_payment(payment.pk)
    time_machine.move_to(payment.expires_at + timedelta(seconds=1), tick=False)
    athm_sync.sync_payment(payment.pk)
    time_machine.move_to(payment.expires_at + grace - timedelta(seconds=1), tick=False)
    athm_sync.sync_payment(payment.pk)
    assert reload(payment).status == S.OPEN
    assert received == []

    time_machine.move_to(payment.expires_at + grace, tick=False)
    with caplog.at_level(logging.WARNING, logger="athm_sync.reconcile"):
        athm_sync.sync_payment(payment.pk)

    stored = reload(payment)
    assert stored.status == S.EXPIRED
    assert not Payment.objects.due(later(86400)).exists()
    assert names(received) == ["payment_expired"]
    assert "never reached ATH Móvil" in caplog.text
    assert str(payment.pk) in caplog.text
    assert "never reached ATH Móvil" in stored.last_error


# -- the schedule and MAX_AGE --------------------------------------------------------------


def test_a_payment_that_never_finishes_is_given_up_after_max_age(
    athm, settings, received, caplog, time_machine
):
    settings.ATHM_SYNC = {**settings.ATHM_SYNC, "MAX_AGE": timedelta(minutes=5)}
    sandbox = athm
    payment = track(sandbox, timeout=600)  # still OPEN at ATH Móvil for 10 minutes
    athm_sync.sync_payment(payment.pk)
    assert reload(payment).next_check_at is not None

    time_machine.move_to(payment.created_at + timedelta(minutes=5, seconds=1), tick=False)
    assert list(Payment.objects.due()) == [reload(payment)]
    with caplog.at_level(logging.WARNING, logger="athm_sync.reconcile"):
        outcome = athm_sync.sync_payment(payment.pk)

    stored = reload(payment)
    assert sandbox.payment(str(payment.pk))["status"] == "OPEN"
    assert outcome.given_up
    assert stored.status == S.OPEN and stored.given_up_at == clock.now()
    assert list(Payment.objects.given_up()) == [stored]
    assert "given up" in stored.last_error
    assert "Gave up on payment" in caplog.text and str(payment.pk) in caplog.text
    assert list(Payment.objects.due(clock.now() + timedelta(days=365))) == []
    assert received == []


def test_the_check_schedule_never_passes_the_deadline_then_backs_off(athm, settings, time_machine):
    """A payment polled whenever it is due: often before its deadline (never past it, so an
    expiry is seen on time), then at an interval that doubles from 30 s up to an hour."""
    settings.ATHM_SYNC = {**settings.ATHM_SYNC, "EXPIRY_GRACE": timedelta(hours=6)}
    # ATH Móvil does not know it, so it stays OPEN past its deadline until the grace is over.
    payment = Payment.objects.track(uuid.uuid4(), total="10.00", timeout=300)
    checks = []
    time_machine.move_to(payment.created_at, tick=False)
    for _ in range(40):
        athm_sync.sync_payment(payment.pk)
        checked = reload(payment)
        if checked.is_terminal:
            checks.append((checked.last_checked_at, None))
            break
        checks.append((checked.last_checked_at, checked.next_check_at))
        time_machine.move_to(checked.next_check_at, tick=False)

    deadline = payment.expires_at
    before = [(at, nxt) for at, nxt in checks if at < deadline]
    after = [(nxt - at).total_seconds() for at, nxt in checks if at >= deadline and nxt]
    assert all(nxt <= deadline for _, nxt in before)
    assert all(timedelta(seconds=5) <= nxt - at <= timedelta(seconds=60) for at, nxt in before)
    assert any(at == deadline for at, _ in checks)  # checked right at the deadline
    assert after[:8] == [30, 60, 120, 240, 480, 960, 1920, 3600]
    assert set(after[8:]) == {3600}


# -- claims --------------------------------------------------------------------------------


def test_two_runs_claim_disjoint_sets_and_a_dead_holders_lease_expires(athm):
    sandbox = athm
    payments = {track(sandbox).pk for _ in range(6)}
    now = later(1)
    lease = timedelta(minutes=5)

    first = reconcile.claim_due("run-a", limit=4, lease=lease, now=now)
    second = reconcile.claim_due("run-b", limit=4, lease=lease, now=now)

    first_ids, second_ids = {c.ecommerce_id for c in first}, {c.ecommerce_id for c in second}
    assert len(first_ids) == 4 and len(second_ids) == 2
    assert first_ids.isdisjoint(second_ids) and first_ids | second_ids == payments
    assert reconcile.claim_due("run-c", limit=10, lease=lease, now=now) == []

    # run-a died; its lease runs out and another run takes its payments.
    after_lease = now + lease + timedelta(seconds=1)
    taken = reconcile.claim_due("run-c", limit=10, lease=lease, now=after_lease)
    assert {c.ecommerce_id for c in taken} == payments  # run-b's lease ran out too

    assert reconcile.release_claims("run-c") == 6
    assert set(Payment.objects.values_list("claimed_by", flat=True)) == {""}
    again = reconcile.claim_due("run-d", limit=10, lease=lease, now=now)
    assert {c.ecommerce_id for c in again} == payments


def test_a_claim_carries_the_auth_token_and_a_check_releases_it(athm):
    payment = create()
    (claimed,) = reconcile.claim_due("run-a", limit=10, lease=timedelta(minutes=5))
    assert claimed.ecommerce_id == payment.pk and claimed.auth_token == payment.auth_token

    athm_sync.sync_payment(payment.pk)

    stored = reload(payment)
    assert stored.claimed_by == "" and stored.claimed_until is None


# -- query counts --------------------------------------------------------------------------

# Measured, the same on SQLite and PostgreSQL (Django 5.2 logs BEGIN and COMMIT):
# BEGIN, SELECT ... FOR UPDATE, UPDATE of the row, COMMIT.
UNCHANGED_QUERIES = 4
# Plus the event INSERT; then after commit the dispatch's own transaction: BEGIN, the "sent"
# mark, COMMIT (and a SAVEPOINT/RELEASE per receiver). The event just committed is sent as it
# is, not read again.
CHANGED_QUERIES = 8


def test_apply_costs_a_fixed_number_of_queries(athm, client, django_assert_num_queries):
    sandbox = athm
    unchanged, changed = create(), create()
    sandbox.complete(str(changed.pk))
    for _ in range(20):  # other payments stored change nothing
        create()
    quiet = reconcile.observe(client, unchanged.pk)
    news = reconcile.observe(client, changed.pk)

    with django_assert_num_queries(UNCHANGED_QUERIES):
        reconcile.apply(quiet)
    with django_assert_num_queries(CHANGED_QUERIES):
        outcome = reconcile.apply(news)
    assert outcome.signals_sent == 1
    with django_assert_num_queries(UNCHANGED_QUERIES):
        reconcile.apply(news)  # the same news again: nothing to do


# -- SQLite's "database is locked" -----------------------------------------------------------


@pytest.fixture
def sleeps(monkeypatch):
    slept = []
    monkeypatch.setattr(database, "time", SimpleNamespace(sleep=slept.append))
    return slept


@pytest.mark.skipif(connection.vendor != "sqlite", reason="SQLite's locking only")
def test_run_locked_retries_database_is_locked(sleeps):
    calls = []

    def work():
        calls.append(1)
        if len(calls) < 3:
            raise OperationalError("database is locked")
        return "done"

    assert reconcile.run_locked(work) == "done"
    assert len(calls) == 3 and len(sleeps) == 2


@pytest.mark.skipif(connection.vendor != "sqlite", reason="SQLite's locking only")
def test_run_locked_does_not_retry_other_errors_or_forever(sleeps):
    calls = []

    def broken():
        calls.append(1)
        raise OperationalError("no such table: athm_sync_payment")

    with pytest.raises(OperationalError, match="no such table"):
        reconcile.run_locked(broken)
    assert len(calls) == 1 and sleeps == []

    def always_locked():
        calls.append(1)
        raise OperationalError("database is locked")

    calls.clear()
    with pytest.raises(OperationalError, match="locked"):
        reconcile.run_locked(always_locked, attempts=4)
    assert len(calls) == 4


@pytest.mark.skipif(connection.vendor != "sqlite", reason="SQLite's locking only")
def test_run_locked_inside_a_transaction_does_not_retry(sleeps):
    calls = []

    def work():
        calls.append(1)
        raise OperationalError("database is locked")

    with pytest.raises(OperationalError), transaction.atomic():
        reconcile.run_locked(work)
    assert len(calls) == 1 and sleeps == []
