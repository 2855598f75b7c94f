"""Migrations carry a shop's existing rows over, as ``manage.py migrate`` runs them."""

from __future__ import annotations

import uuid
from datetime import timedelta
from decimal import Decimal

import pytest
from django.db import connection
from django.db.migrations.executor import MigrationExecutor

from athm_sync import clock
from athm_sync.fields import as_stored
from athm_sync.models import Payment

BEFORE = [("athm_sync", "0003_webhookevent")]
AFTER = [("athm_sync", "0004_money_checks_and_open_rows")]


@pytest.fixture
def migrate_to():
    """Migrate the test database to a state; back to the latest afterwards."""

    def migrate(targets):
        executor = MigrationExecutor(connection)
        executor.loader.build_graph()
        executor.migrate(targets)
        return executor.loader.project_state(targets).apps

    yield migrate
    migrate(MigrationExecutor(connection).loader.graph.leaf_nodes())


@pytest.mark.django_db(transaction=True)
def test_0004_schedules_rows_that_had_no_schedule_and_records_who_was_given_up(migrate_to):
    """Before 0004 an empty ``next_check_at`` meant both "given up" and "stored by create(),
    never scheduled"; after it, the first is ``given_up_at`` and the second is due."""
    old = migrate_to(BEFORE).get_model("athm_sync", "Payment")
    # A historical model has Django's own DateTimeField: naive local times under USE_TZ = False.
    checked_at = clock.now() - timedelta(days=3)
    ids = {name: uuid.uuid4() for name in ("given_up", "never_checked", "scheduled", "completed")}
    old.objects.create(
        ecommerce_id=ids["given_up"], total=Decimal("5"), last_checked_at=as_stored(checked_at)
    )
    old.objects.create(ecommerce_id=ids["never_checked"], total=Decimal("5"))
    soon = clock.now() + timedelta(seconds=30)
    old.objects.create(
        ecommerce_id=ids["scheduled"], total=Decimal("5"), next_check_at=as_stored(soon)
    )
    old.objects.create(
        ecommerce_id=ids["completed"],
        total=Decimal("5"),
        status="COMPLETED",
        last_checked_at=as_stored(checked_at),
    )

    migrate_to(AFTER)

    rows = Payment.objects.in_bulk()
    assert rows[ids["given_up"]].given_up_at == checked_at
    assert rows[ids["never_checked"]].given_up_at is None
    assert rows[ids["scheduled"]].next_check_at == soon
    assert rows[ids["completed"]].next_check_at == checked_at
    assert list(Payment.objects.due()) == [rows[ids["never_checked"]]]
    assert list(Payment.objects.due(soon)) == [rows[ids["never_checked"]], rows[ids["scheduled"]]]
    assert all(row.next_check_at is not None for row in rows.values())


@pytest.mark.django_db(transaction=True)
def test_0013_leaves_older_webhook_events_without_a_body_and_the_admin_says_so(
    migrate_to, admin_client
):
    from athm_sync.models import WebhookEvent

    old = migrate_to([("athm_sync", "0011_checkout")]).get_model("athm_sync", "WebhookEvent")
    stored = old.objects.create(
        payload={"transactionType": "payment"}, transaction_type="payment", idempotency_key="k"
    )

    migrate_to([("athm_sync", "0013_webhookevent_body")])

    event = WebhookEvent.objects.get(pk=stored.pk)
    assert (event.body, event.body_encoding, event.body_bytes()) == ("", "utf-8", b"")
    page = admin_client.get(f"/admin/athm_sync/webhookevent/{event.pk}/change/")
    assert "Not kept: this event was stored before webhook bodies were kept whole" in (
        page.content.decode()
    )


@pytest.mark.django_db
def test_the_models_need_no_migration_the_app_does_not_ship():
    """A label (verbose_name) or field changed without its migration would make a shop's own
    makemigrations write one into the installed package."""
    from io import StringIO

    from django.core.management import call_command

    out = StringIO()
    call_command("makemigrations", "athm_sync", "--check", "--dry-run", stdout=out)
    assert "No changes detected" in out.getvalue()
