"""The poller at scale: claims taken ahead, unchanged checks written in bulk, bounded memory.

Counts, never time: queries per batch, API calls per payment, what is kept in the report.
Rows are stored the way shops store them in bulk (``bulk_create``, no ``expires_at``).
"""

from __future__ import annotations

import json
import uuid
from datetime import timedelta
from decimal import Decimal

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

import athm_sync
import athm_sync.claims
from athm_sync import bulk_checks, clock, reconcile
from athm_sync.client import ATHMovilClient
from athm_sync.conf import get_settings
from athm_sync.models import Payment, SyncRun
from athm_sync.runner import SAMPLE_SIZE, Runner, RunOptions
from athm_sync.sandbox import SandboxServer
from tests.commands import call

pytestmark = pytest.mark.django_db(transaction=True)

S = Payment.Status
# --workers 2 makes batches of 10 (at least 10, 4 per worker).
WORKERS = 2
BATCH = 10


def stored_in_bulk(sandbox: SandboxServer, count: int, *, completed: int = 0) -> list[Payment]:
    """``count`` OPEN payments created at the sandbox and stored with ``bulk_create``, due now;
    the first ``completed`` of them the customer has already paid."""
    rows = []
    for index in range(count):
        ecommerce_id, auth_token = sandbox.create_payment("10.00", metadata1=f"order-{index}")
        if index < completed:
            sandbox.complete(ecommerce_id)
        rows.append(
            Payment(
                ecommerce_id=uuid.UUID(ecommerce_id),
                total=Decimal("10.00"),
                metadata_1=f"order-{index}",
                auth_token=auth_token,
                next_check_at=clock.now() - timedelta(seconds=1),
            )
        )
    return Payment.objects.bulk_create(rows)


def run_json(*args: str) -> dict:
    code, out, _ = call("athm_sync", "--json", "--workers", str(WORKERS), *args)
    document = json.loads(out)
    assert document["exit_code"] == code
    return document


def queries_of_a_run(sandbox: SandboxServer, unchanged: int, changed: int = 0) -> int:
    Payment.objects.all().delete()
    run_json()  # with nothing due: the refund scan, due once per 15 minutes, is done here
    stored_in_bulk(sandbox, unchanged + changed, completed=changed)
    sandbox.reset_counts()
    with CaptureQueriesContext(connection) as context:
        document = run_json()
    assert document["exit_code"] == 0
    assert (document["unchanged"], document["transitions"]["completed"]) == (unchanged, changed)
    # Each due payment is asked about exactly once.
    assert sandbox.counts()["findPayment"] == unchanged + changed
    return len(context.captured_queries)


def test_unchanged_payments_cost_queries_per_batch_not_per_payment(athm_settings):
    twenty, forty, eighty = (queries_of_a_run(athm_settings, n) for n in (20, 40, 80))
    per_batch = (forty - twenty) / 2
    # Two more batches cost the same whatever their place: a constant per batch...
    assert eighty - forty == 2 * (forty - twenty), (twenty, forty, eighty)
    # ...of a claim (BEGIN, SELECT, UPDATE, SELECT, COMMIT) and one bulk write, for 10 payments.
    assert per_batch == 6, (twenty, forty, eighty)


def test_each_changed_payment_keeps_its_own_locked_transaction(athm_settings):
    quiet = queries_of_a_run(athm_settings, 20)
    with_news = queries_of_a_run(athm_settings, 20, changed=10)
    # The ten completions: one more batch to claim and, per payment, what apply() costs
    # (tests/test_reconcile.py: CHANGED_QUERIES), with the bulk writes unchanged in number.
    from tests.test_reconcile import CHANGED_QUERIES

    assert with_news == quiet + 5 + 10 * CHANGED_QUERIES, (quiet, with_news)


def test_the_next_batch_is_claimed_while_the_current_one_is_in_flight(athm_settings, monkeypatch):
    stored_in_bulk(athm_settings, 5 * BATCH)
    log: list[tuple[str, int]] = []
    settled = 0
    claim_due, settle_unchanged = athm_sync.claims.claim_due, bulk_checks.settle_unchanged

    def logged_claim(*args, **kwargs):
        claimed = claim_due(*args, **kwargs)
        log.append(("claim", settled))
        return claimed

    def logged_settle(*args, **kwargs):
        nonlocal settled
        settled += 1
        return settle_unchanged(*args, **kwargs)

    monkeypatch.setattr(athm_sync.claims, "claim_due", logged_claim)
    monkeypatch.setattr(bulk_checks, "settle_unchanged", logged_settle)

    report = Runner(RunOptions(workers=WORKERS)).run()

    assert report.checked == 5 * BATCH and report.unchanged == 5 * BATCH
    claims = [answers for event, answers in log if event == "claim"]
    # Two batches are taken before any answer; then one more each time a batch's worth of
    # answers came in, while the one after it is still in flight. The last claim finds none.
    assert claims == [0, 0, 10, 20, 30, 40], claims


def test_a_door_that_checks_a_claimed_payment_meanwhile_wins_over_the_bulk_write(
    athm_settings, client
):
    (payment,) = stored_in_bulk(athm_settings, 1)
    (claimed,) = reconcile.claim_due("run-a", limit=10, lease=timedelta(minutes=5))
    observation = reconcile.observe(client, claimed.pk)  # OPEN: nothing to change
    conf = get_settings()
    settled = bulk_checks.settle_unchanged(claimed, observation, now=clock.now(), conf=conf)
    assert settled is not None

    # Before the run writes its batch, the customer pays and a webhook's check applies it.
    athm_settings.complete(str(payment.pk))
    athm_sync.sync_payment(payment.pk)
    applied = Payment.objects.get(pk=payment.pk)

    assert bulk_checks.record_unchanged("run-a", [settled]) == 0
    stored = Payment.objects.get(pk=payment.pk)
    assert stored.status == S.COMPLETED
    assert (stored.check_count, stored.next_check_at) == (
        applied.check_count,
        applied.next_check_at,
    )


def test_a_bulk_written_check_leaves_the_row_as_apply_would(athm_settings, client):
    one, other = stored_in_bulk(athm_settings, 2)
    Payment.objects.update(failures=3, last_error="ATH Móvil timed out")
    now = clock.now()
    conf = get_settings()
    by_apply = reconcile.apply(reconcile.observe(client, one.pk), now=now).payment

    (claimed,) = reconcile.claim_due("run-b", limit=10, lease=timedelta(minutes=5), now=now)
    observation = reconcile.observe(client, other.pk)
    settled = bulk_checks.settle_unchanged(claimed, observation, now=now, conf=conf)
    assert bulk_checks.record_unchanged("run-b", [settled], now=now) == 1

    fields = (
        "status",
        "check_count",
        "failures",
        "last_error",
        "last_checked_at",
        "next_check_at",
        "expires_at",
        "claimed_by",
        "claimed_until",
    )
    # Both rows were created alike and checked at the same moment.
    by_bulk = Payment.objects.get(pk=other.pk)
    by_apply = Payment.objects.get(pk=by_apply.pk)
    assert by_bulk.expires_at == by_bulk.created_at + timedelta(seconds=600)
    offset = by_bulk.created_at - by_apply.created_at
    for name in fields:
        mine, theirs = getattr(by_bulk, name), getattr(by_apply, name)
        if name in ("expires_at",):
            theirs = theirs + offset
        assert mine == theirs, name


def test_answers_that_are_not_plain_go_through_apply(athm_settings, client):
    """A capture, a refund, new customer fields or an error are never written in bulk."""
    conf = get_settings()
    now = clock.now()
    confirmed, refunded, failing = stored_in_bulk(athm_settings, 3)
    athm_settings.confirm(str(confirmed.pk))  # CONFIRM, with the customer's name now
    athm_settings.complete(str(refunded.pk))
    athm_sync.sync_payment(refunded.pk)
    athm_settings.refund(str(refunded.pk), "2.00")
    Payment.objects.update(next_check_at=now)
    athm_settings.inject_fault("garbage", "findPayment", times=1)

    claimed = {p.pk: p for p in Payment.objects.all()}
    for payment in (failing, confirmed, refunded):
        observation = reconcile.observe(client, payment.pk, capture=False)
        assert (
            bulk_checks.settle_unchanged(claimed[payment.pk], observation, now=now, conf=conf)
            is None
        )


def test_the_report_keeps_every_count_but_a_bounded_sample(athm_settings):
    count = SAMPLE_SIZE + 20
    payments = stored_in_bulk(athm_settings, count)
    for payment in payments:  # answers no payment can have: an error each, none transient
        athm_settings.tamper(str(payment.pk), total=-1)

    document = run_json()

    assert document["exit_code"] == 1 and document["checked"] == 0
    assert document["error_count"] == count and len(document["errors"]) == SAMPLE_SIZE
    recorded = SyncRun.objects.get().errors
    assert len(recorded) == SAMPLE_SIZE + 1
    assert recorded[-1]["reason"] == "and 20 more error(s)"


def test_changes_are_counted_exactly_and_sampled(athm_settings):
    count = SAMPLE_SIZE + 5
    stored_in_bulk(athm_settings, count, completed=count)
    seen = []

    report = Runner(RunOptions(workers=WORKERS), on_change=seen.append).run()

    assert report.transitions["completed"] == count and len(seen) == count
    assert len(report.changes) == SAMPLE_SIZE


def test_a_dry_run_pages_through_the_due_payments_once_each(athm_settings):
    stored_in_bulk(athm_settings, 3 * BATCH + 4, completed=4)
    athm_settings.reset_counts()
    before = list(Payment.objects.values_list("pk", "check_count", "next_check_at"))

    document = run_json("--dry-run")

    assert document["checked"] == 3 * BATCH + 4
    assert document["transitions"]["completed"] == 4
    assert athm_settings.counts()["findPayment"] == 3 * BATCH + 4
    assert list(Payment.objects.values_list("pk", "check_count", "next_check_at")) == before
    limited = run_json("--dry-run", "--limit", "15")
    assert limited["checked"] == 15


@pytest.fixture
def client(athm_settings):
    api = ATHMovilClient.from_settings()
    yield api
    api.close()
