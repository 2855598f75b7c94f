"""A dry run's count: what a run would do with one answer, decided as the run would, and
nothing written (``--dry-run``; ATH Móvil is never asked to capture)."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from datetime import datetime

from athm_sync import reconcile
from athm_sync.client import PaymentSnapshot
from athm_sync.conf import AthmSyncSettings
from athm_sync.models import Payment, PaymentEvent
from athm_sync.run_report import Change, ErrorKind, RunReport


def count_decision(
    report: RunReport,
    payment: Payment,
    observation: reconcile.Observation,
    *,
    now: datetime,
    conf: AthmSyncSettings,
    changed: Callable[[Change], None],
) -> None:
    """Count in ``report`` what applying ``observation`` would do, and pass each change it
    would make to ``changed``."""
    if observation.error is not None:
        report.add_error(payment.pk, str(observation.error), ErrorKind.PAYMENT_NOT_CHECKED)
        return
    report.checked += 1
    snapshot = observation.snapshot
    if would_capture(payment, snapshot, now, conf):
        # The real run would capture it, and ATH Móvil would answer COMPLETED.
        report.captured += 1
        snapshot = dataclasses.replace(snapshot, status=Payment.Status.COMPLETED)
    decision = reconcile.decide(payment, snapshot, now=now, conf=conf)
    kinds = []
    if decision.event:
        kinds.append(str(decision.event))
    if decision.refund_amount > 0:
        kinds.append(PaymentEvent.Kind.REFUND_SENT.value)
    if not kinds:
        report.unchanged += 1
        if (
            decision.status not in Payment.TERMINAL_STATUSES
            and now >= payment.created_at + conf.max_age
        ):
            report.given_up += 1
        return
    for kind in kinds:
        report.transitions[kind] += 1
        amount = decision.refund_amount if kind == "refund_sent" else payment.total
        changed(Change(payment.pk, kind, decision.status, amount, payment.metadata_1))


def would_capture(
    payment: Payment, snapshot: PaymentSnapshot | None, now: datetime, conf: AthmSyncSettings
) -> bool:
    """Whether a real run would capture ``payment`` on this answer (as
    :func:`athm_sync.reconcile.observe` decides)."""
    return bool(
        snapshot is not None
        and snapshot.status == Payment.Status.CONFIRM
        and conf.auto_capture
        and not payment.is_terminal
        and payment.auth_token
        and not reconcile.mismatch(payment, snapshot)
        and reconcile.auth_token_usable(payment.auth_token, now)
    )
