"""Checks that change nothing but a payment's schedule: settled in memory, written in bulk.

Most of a poll's checks find the payment as it was. Such a check is decided by the same
:func:`athm_sync.reconcile.decide` as :func:`~athm_sync.reconcile.apply`'s, on the row as
claimed (:func:`settle_unchanged`), and written with the rest of its batch in one query
(:func:`record_unchanged`), only where the run still holds the claim: any door that applied
the payment meanwhile released it, and its write stands.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from django.db import connection

from athm_sync import clock
from athm_sync.conf import AthmSyncSettings
from athm_sync.database import run_locked
from athm_sync.models import Payment
from athm_sync.reconcile import (
    REMOTE_FIELDS,
    Observation,
    copy_remote_fields,
    decide,
    record_check,
)


@dataclass(frozen=True)
class Settled:
    """A check that changed nothing but the schedule (and perhaps descriptive fields ATH
    Móvil filled in, such as the business name): ``payment`` as the check leaves it, and the
    names of the remote fields it changed."""

    payment: Payment
    remote_fields: tuple[str, ...] = ()


# What every settled check writes; record_unchanged adds the remote fields some row changed.
_SCHEDULE_FIELDS = ("next_check_at", "last_checked_at", "expires_at")


def settle_unchanged(
    payment: Payment, observation: Observation, *, now: datetime, conf: AthmSyncSettings
) -> Settled | None:
    """The claimed ``payment`` as one more check leaves it, when ``observation`` changes
    nothing but its schedule and descriptive fields; ``None`` when it must go through
    :func:`~athm_sync.reconcile.apply` instead.

    That is when the answer was read (no error), nothing was captured or dropped,
    :func:`~athm_sync.reconcile.decide` finds no transition, refund, note or mismatch, and the
    payment is not given up now. Such checks are written many at a time by
    :func:`record_unchanged`. The decision is made by the same functions as
    :func:`~athm_sync.reconcile.apply`'s, on the row as it was claimed.
    """
    if observation.error is not None or observation.captured or observation.drop_auth_token:
        return None
    if observation.refunds:
        return None
    snapshot = observation.snapshot
    decision = decide(payment, snapshot, now=now, conf=conf)
    if decision.changes_anything or decision.note or decision.mismatch:
        return None
    if decision.status != payment.status:
        return None
    checked = copy.copy(payment)
    changed: tuple[str, ...] = ()
    if snapshot is not None:
        copy_remote_fields(checked, snapshot, refresh_all=not checked.is_terminal)
        changed = tuple(
            name for name in REMOTE_FIELDS if getattr(checked, name) != getattr(payment, name)
        )
    if record_check(checked, now, conf, "") or checked.given_up_at is not None:
        return None
    if checked.expires_at is None:
        checked.expires_at = checked.compute_expires_at()
    return Settled(checked, changed)


def record_unchanged(run_id: str, settled: Iterable[Settled], now: datetime | None = None) -> int:
    """Write the checks :func:`settle_unchanged` settled, in one query; returns how many rows
    took them.

    Only rows ``run_id`` still holds are written: any other door that checked a payment
    meanwhile (a webhook, ``sync_payment``, the admin) went through
    :func:`~athm_sync.reconcile.apply`, which released the claim, and its write stands.
    """
    settled = list(settled)
    by_pk = {each.payment.pk: each.payment for each in settled}
    if not by_pk:
        return 0
    now = now or clock.now()
    remote = {name for each in settled for name in each.remote_fields}
    per_row = [*_SCHEDULE_FIELDS, *(name for name in REMOTE_FIELDS if name in remote)]
    same = {
        "check_count": None,  # + 1
        "failures": 0,
        "last_error": "",
        "claimed_by": "",
        "claimed_until": None,
        "updated_at": now,
    }
    sql, params = _bulk_update_sql(by_pk, per_row, same, run_id)

    def write() -> int:
        with connection.cursor() as cursor:
            cursor.execute(sql, params)
            return cursor.rowcount

    return run_locked(write)


def _bulk_update_sql(
    rows: dict[Any, Payment], per_row: Sequence[str], same: dict[str, Any], run_id: str
) -> tuple[str, list[Any]]:
    """One ``UPDATE`` of ``rows`` (held by ``run_id``): the ``per_row`` fields from each row
    (``CASE pk WHEN ... THEN ...``), the ``same`` ones set alike (``check_count`` incremented).

    Written as SQL because the ORM's ``Case(When(pk=...))`` builds a filter for every row and
    field, which cost more than the checks it writes; the values are prepared by the model's
    own fields, as the ORM would.
    """
    meta = Payment._meta
    quote = connection.ops.quote_name
    pk_column = quote(meta.pk.column)
    pks = [meta.pk.get_db_prep_value(pk, connection) for pk in rows]
    assignments: list[str] = []
    params: list[Any] = []
    for name in per_row:
        field = meta.get_field(name)
        column = quote(field.column)
        whens = " ".join(["WHEN %s THEN %s"] * len(rows))
        assignments.append(f"{column} = CASE {pk_column} {whens} ELSE {column} END")
        for db_pk, payment in zip(pks, rows.values(), strict=True):
            params += [db_pk, field.get_db_prep_save(getattr(payment, name), connection)]
    for name, value in same.items():
        field = meta.get_field(name)
        column = quote(field.column)
        if name == "check_count":
            assignments.append(f"{column} = {column} + 1")
            continue
        assignments.append(f"{column} = %s")
        params.append(field.get_db_prep_save(value, connection))
    claimed_by = quote(meta.get_field("claimed_by").column)
    placeholders = ", ".join(["%s"] * len(pks))
    # Identifiers come from the model, quoted; every value is a parameter.
    sql = (
        f"UPDATE {quote(meta.db_table)} SET {', '.join(assignments)} "  # noqa: S608
        f"WHERE {pk_column} IN ({placeholders}) AND {claimed_by} = %s"
    )
    return sql, [*params, *pks, run_id]
