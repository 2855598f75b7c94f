"""A shop with ``USE_TZ = False`` (and ``TIME_ZONE = "America/New_York"``, tests/settings.py).

Django then stores naive local times; the app still works in aware UTC inside and converts at
the database boundary (``athm_sync.fields``). These tests switch ``USE_TZ`` off themselves, so
they run in every pass of the suite; ``.ci/run`` also runs the end-to-end tests with
``ATHM_TEST_USE_TZ=0`` (every test, and every child process, under ``USE_TZ = False``).
"""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from zoneinfo import ZoneInfo

import pytest
from django.db import connection
from django.utils.dateparse import parse_datetime

from athm_sync import clock
from athm_sync.models import Payment, Refund, SyncRun
from athm_sync.normalize import PUERTO_RICO, local_datetime
from tests.commands import call

pytestmark = pytest.mark.django_db(transaction=True)

NEW_YORK = ZoneInfo("America/New_York")
SECRET = "w" * 40  # tests/settings.py


@pytest.fixture
def naive(settings):
    """The project's settings with ``USE_TZ = False`` for this test."""
    settings.USE_TZ = False
    assert settings.TIME_ZONE == "America/New_York"
    return settings


def run(*args: str) -> tuple[int, dict]:
    code, out, _ = call("athm_sync", "--json", *args)
    return code, json.loads(out)


def stored_column(table: str, column: str, pk: uuid.UUID) -> datetime:
    """What the database itself holds, read past the ORM: naive local time expected."""
    with connection.cursor() as cursor:
        cursor.execute(
            f"SELECT {column} FROM {table} WHERE ecommerce_id = %s",  # noqa: S608 - fixed names
            [Payment._meta.pk.get_db_prep_value(pk, connection)],
        )
        value = cursor.fetchone()[0]
    return value if isinstance(value, datetime) else parse_datetime(value)


def test_the_database_holds_local_time_and_the_app_sees_aware_utc(naive):
    created = clock.now().replace(microsecond=0) - timedelta(minutes=3)
    payment = Payment.objects.track(uuid.uuid4(), total="5.00", created_at=created)

    held = stored_column("athm_sync_payment", "created_at", payment.pk)
    assert held.tzinfo is None  # as Django stores every datetime under USE_TZ = False
    assert held == created.astimezone(NEW_YORK).replace(tzinfo=None)
    again = Payment.objects.get(pk=payment.pk)
    assert again.created_at == created and again.created_at.utcoffset() == timedelta(0)
    assert again.expires_at == created + timedelta(seconds=600)
    assert Payment.objects.due().get() == again  # next_check_at compares as a moment


def test_track_takes_a_naive_local_time_as_django_means_it_and_an_aware_one(naive):
    moment = clock.now().replace(microsecond=0) - timedelta(minutes=5)
    local = moment.astimezone(NEW_YORK).replace(tzinfo=None)

    from_naive = Payment.objects.track(uuid.uuid4(), total="5.00", created_at=local)
    from_aware = Payment.objects.track(uuid.uuid4(), total="5.00", created_at=moment)

    assert Payment.objects.get(pk=from_naive.pk).created_at == moment
    assert Payment.objects.get(pk=from_aware.pk).created_at == moment
    with pytest.raises(ValueError, match="is in the future"):
        Payment.objects.track(uuid.uuid4(), total="5.00", created_at=local + timedelta(hours=1))


def test_rows_the_shop_stores_with_naive_local_times_are_polled(naive, athm_settings, received):
    """The ORM's ``create`` and ``bulk_create`` with Django's naive ``timezone.now()``-style
    values: both due at once. (A row raw SQL leaves to the database defaults is
    tests/test_money.py's, which the ``ATHM_TEST_USE_TZ=0`` pass runs on tables migrated with
    ``USE_TZ = False``: the default is compiled into the table then.)"""
    sandbox = athm_settings
    local_now = clock.now().astimezone(NEW_YORK).replace(tzinfo=None)
    ids = []
    for n in range(2):
        ecommerce_id, _ = sandbox.create_payment("4.00", metadata1=f"order-{n}")
        sandbox.complete(ecommerce_id)
        ids.append(ecommerce_id)
    Payment.objects.create(ecommerce_id=ids[0], total=Decimal("4.00"), metadata_1="order-0")
    Payment.objects.bulk_create(
        [
            Payment(
                ecommerce_id=ids[1],
                total=Decimal("4.00"),
                metadata_1="order-1",
                created_at=local_now,
                next_check_at=local_now,
            )
        ]
    )
    assert Payment.objects.due().count() == 2

    code, summary = run()

    assert code == 0 and summary["transitions"]["completed"] == 2
    assert [name for name, _, _ in received] == ["payment_completed"] * 2


def test_a_completion_stores_ath_moviles_puerto_rico_time_as_the_moment_it_was(
    naive, athm_customer, received
):
    ecommerce_id = athm_customer.pay("12.00", metadata_1="order-1")

    code, summary = run()

    assert code == 0, summary["errors"]
    payment = Payment.objects.get(pk=ecommerce_id)
    assert payment.status == Payment.Status.COMPLETED
    remote = athm_customer.sandbox.payment(ecommerce_id)["transactionDate"]
    assert payment.transaction_date == local_datetime(remote)  # PR local → the same moment
    held = stored_column("athm_sync_payment", "transaction_date", payment.pk)
    assert held == payment.transaction_date.astimezone(NEW_YORK).replace(tzinfo=None)
    assert [name for name, _, _ in received] == ["payment_completed"]
    assert SyncRun.objects.get().finished_at is not None


def test_cancel_before_the_deadline_and_expiry_after_it(naive, athm_customer, received):
    cancelled = athm_customer.start("3.00")
    athm_customer.track(cancelled)
    athm_customer.cancel(cancelled)
    expired = athm_customer.start("4.00", timeout=120)
    athm_customer.track(expired)
    athm_customer.let_expire(expired)

    code, _ = run()

    assert code == 0
    assert Payment.objects.get(pk=cancelled).status == Payment.Status.CANCEL
    assert Payment.objects.get(pk=expired).status == Payment.Status.EXPIRED
    assert sorted(name for name, _, _ in received) == ["payment_cancelled", "payment_expired"]


def test_a_genuine_webhook_for_an_untracked_payment_brings_it_in(naive, athm_customer, received):
    ecommerce_id = athm_customer.start("9.00", metadata_1="order-9")
    athm_customer.complete(ecommerce_id)

    response = athm_customer.send_webhook(ecommerce_id)

    assert response.status_code == 200
    payment = Payment.objects.get(pk=ecommerce_id)
    assert payment.status == Payment.Status.COMPLETED and payment.created_at <= clock.now()
    assert [name for name, _, _ in received] == ["payment_completed"]


def test_the_refund_scan_and_a_backfill(naive, athm_customer, received, time_machine):
    ecommerce_id = athm_customer.pay("20.00")
    assert run()[0] == 0
    athm_customer.refund(ecommerce_id, "5.00", "one item")  # in the Business app
    time_machine.move_to(clock.now() + timedelta(minutes=16), tick=False)

    code, summary = run()

    assert code == 0, summary["errors"]
    assert summary["refund_scan"]["refunds"] == 1
    refund = Refund.objects.get()
    remote = athm_customer.sandbox.payment(ecommerce_id)["refunds"][0]
    assert refund.amount == Decimal("5.00") and refund.transaction_date == local_datetime(
        remote["date"]
    )
    today = clock.now().astimezone(PUERTO_RICO).date().isoformat()
    other_id, _ = athm_customer.sandbox.create_payment("7.00")
    athm_customer.complete(other_id)

    code, summary = run("--from-date", today, "--to-date", today)

    assert code == 0, summary["errors"]
    assert summary["backfill"]["payments_created"] == 1
    assert Payment.objects.get(pk=other_id).transaction_date is not None


def test_health_and_retention_read_the_times_right(naive, athm_settings, settings):
    assert run()[0] == 0
    code, out, _ = call("athm_sync", "--health")
    assert code == 0 and "healthy" in out
    old = SyncRun.objects.create(
        started_at=datetime(2020, 1, 1, tzinfo=UTC), finished_at=datetime(2020, 1, 1, tzinfo=UTC)
    )
    settings.ATHM_SYNC = {**settings.ATHM_SYNC, "HISTORY_RETENTION": timedelta(days=30)}

    assert run()[0] == 0

    assert not SyncRun.objects.filter(pk=old.pk).exists() and SyncRun.objects.count() == 2
