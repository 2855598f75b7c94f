"""Keeping the history tables bounded: what the sync deletes after ``HISTORY_RETENTION``.

Three tables grow with every run and every webhook: ``SyncRun`` (about 525,000 rows a year at
one run a minute), ``WebhookEvent`` and ``PaymentEvent``. Each run deletes what is older than
``HISTORY_RETENTION`` (default 90 days), at most ``BATCH`` rows of each table, oldest first,
through an index, so the cost of a run stays bounded and a backlog clears over a few runs:

- webhook events that are settled (any outcome but ``pending``);
- payment events whose signal was sent (a pending one is never lost), but never one with a
  receiver still being retried, or given up and not acknowledged by a person
  (``athm_sync.outbox``: it is still reported); an acknowledged one goes with its event;
- sync runs (one that never finished died long before the cutoff).

Payments and refunds are never deleted: they are the shop's records of money.
"""

from __future__ import annotations

from datetime import datetime

from django.db import models
from django.db.models import Exists, OuterRef, Q

from athm_sync import database
from athm_sync.conf import AthmSyncSettings
from athm_sync.models import PaymentEvent, ReceiverDelivery, SyncRun, WebhookEvent

BATCH = 1000


def prune(conf: AthmSyncSettings, now: datetime, batch: int = BATCH) -> dict[str, int]:
    """Delete one batch of each kind of old history; returns how many rows of each."""
    cutoff = now - conf.history_retention
    unsettled = ReceiverDelivery.objects.filter(
        event=OuterRef("pk"), delivered_at__isnull=True, acknowledged_at__isnull=True
    )
    old: dict[str, tuple[type[models.Model], Q, str]] = {
        "webhook_events": (
            WebhookEvent,
            Q(received_at__lt=cutoff, outcome__in=_settled_outcomes()),
            "received_at",
        ),
        "payment_events": (
            PaymentEvent,
            Q(created_at__lt=cutoff, dispatched_at__isnull=False) & ~Exists(unsettled),
            "created_at",
        ),
        # A run that started that long ago and never finished died long ago: it goes too.
        "sync_runs": (SyncRun, Q(started_at__lt=cutoff), "started_at"),
    }
    return {name: _delete_oldest(*spec, batch=batch) for name, spec in old.items()}


def _settled_outcomes() -> list[str]:
    return [outcome for outcome in WebhookEvent.Outcome.values if outcome != "pending"]


def _delete_oldest(model: type[models.Model], condition: Q, by: str, *, batch: int) -> int:
    ids = list(
        model.objects.filter(condition).order_by(by, "pk").values_list("pk", flat=True)[:batch]
    )
    if not ids:
        return 0
    database.run_locked(lambda: model.objects.filter(pk__in=ids).delete())
    return len(ids)
