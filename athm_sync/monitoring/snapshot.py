"""What the health endpoint and the metrics read: the sync's state now, from the database.

``athm_sync`` runs are separate processes (cron, a timer, ``--watch``, a task queue), so what
they did is read back from their ``SyncRun`` rows and the payments' own columns at each scrape,
never kept in the web process. :func:`read` costs a fixed number of queries, each answered
through an index, however many payments and runs are stored; it holds counts only, never a
payment's id, a phone number or a token.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from django.db.models import Count, Min, Q

from athm_sync import calls, clock, health, inbox
from athm_sync.managers import StatusIn
from athm_sync.models import Payment, PaymentEvent, ReceiverDelivery, SyncRun
from athm_sync.runner import TRANSITION_KINDS

# The runs of the window whose calls and transitions are added up, newest first: with one run
# a minute, or a --watch pass every 5 s, a window of 10 minutes holds far fewer.
RUNS_READ = 1000
# Exit codes always reported (0 when no run had them), so that alert rules compare numbers.
EXIT_CODES = ("0", "1", "2", "-1")
RUNNING = "running"


@dataclass(frozen=True)
class Snapshot:
    """The sync's state at ``now``; ``recent_*`` count over the ``window`` before it."""

    now: datetime
    window: timedelta
    health: health.Health
    # Payments still followed (OPEN or CONFIRM, not given up), by status.
    followed: dict[str, int]
    due: int
    # Seconds since the most overdue payment became due (0 when none is).
    oldest_due_seconds: float
    # Payments held (MISMATCHED) and payments given up while still open, however long ago.
    held: int
    given_up: int
    # Given up and not delivered since, however long ago (the verdict counts its window's).
    receivers_given_up: int
    pending_webhooks: int
    unsent_signals: int
    # Runs started in the window, by exit code ("running": not finished yet).
    recent_runs: dict[str, int] = field(default_factory=dict)
    # The calls to ATH Móvil of the window's runs (athm_sync.calls.total's shape).
    recent_calls: dict[str, dict[str, Any]] = field(default_factory=dict)
    recent_transitions: dict[str, int] = field(default_factory=dict)
    recent_checked: int = 0

    @property
    def last_success_seconds(self) -> float | None:
        """Seconds since the last successful run finished; ``None`` if none ever did."""
        last = self.health.last_success
        return None if last is None else max(0.0, (self.now - last).total_seconds())


def read(max_age: timedelta = health.DEFAULT_MAX_AGE, now: datetime | None = None) -> Snapshot:
    """The sync's state at ``now``: the verdict of :func:`athm_sync.health.check_health` with
    ``max_age``, and the ``recent_*`` numbers over the same span. Raises ``DatabaseError`` when
    the database cannot be used."""
    now = now or clock.now()
    verdict = health.check_health(max_age, now=now)
    followed = Payment.objects.filter(
        StatusIn(Payment.ACTIVE_STATUSES), given_up_at__isnull=True
    ).aggregate(
        open=Count("pk", filter=Q(status=Payment.Status.OPEN)),
        confirm=Count("pk", filter=Q(status=Payment.Status.CONFIRM)),
        due=Count("pk", filter=Q(next_check_at__lte=now)),
        oldest=Min("next_check_at", filter=Q(next_check_at__lte=now)),
    )
    oldest = followed["oldest"]
    runs, recent = _recent_runs(now - max_age)
    return Snapshot(
        now=now,
        window=max_age,
        health=verdict,
        followed={"OPEN": followed["open"], "CONFIRM": followed["confirm"]},
        due=followed["due"],
        oldest_due_seconds=max(0.0, (now - oldest).total_seconds()) if oldest else 0.0,
        held=Payment.objects.filter(StatusIn((Payment.Status.MISMATCHED,))).count(),
        given_up=Payment.objects.given_up().count(),
        receivers_given_up=ReceiverDelivery.objects.filter(
            given_up_at__isnull=False, delivered_at__isnull=True
        ).count(),
        pending_webhooks=inbox.count_pending(),
        unsent_signals=PaymentEvent.objects.filter(dispatched_at__isnull=True).count(),
        recent_runs=runs,
        recent_calls=calls.total(row["calls"] for row in recent),
        recent_transitions=_transitions(row["transitions"] for row in recent),
        recent_checked=sum(row["checked"] for row in recent),
    )


def _recent_runs(since: datetime) -> tuple[dict[str, int], list[dict[str, Any]]]:
    """The runs started since ``since``: how many by exit code (exact), and the counts of the
    newest ``RUNS_READ`` of them (two queries through the ``started_at`` index)."""
    started = SyncRun.objects.filter(started_at__gte=since)
    runs = dict.fromkeys(EXIT_CODES, 0)
    for row in started.order_by().values("exit_code").annotate(n=Count("pk")):
        code = RUNNING if row["exit_code"] is None else str(row["exit_code"])
        runs[code] = runs.get(code, 0) + row["n"]
    runs.setdefault(RUNNING, 0)
    recent = list(
        started.order_by("-started_at").values("calls", "transitions", "checked")[:RUNS_READ]
    )
    return runs, recent


def _transitions(documents: Any) -> dict[str, int]:
    """The runs' ``transitions`` added up, by kind (every kind a run counts, 0 included)."""
    summed = dict.fromkeys(TRANSITION_KINDS, 0)
    for document in documents:
        if not isinstance(document, dict):
            continue
        for kind, n in document.items():
            if kind in summed and isinstance(n, int) and not isinstance(n, bool) and n > 0:
                summed[kind] += n
    return summed


__all__ = ["RUNNING", "Snapshot", "read"]
