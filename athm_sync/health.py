"""``manage.py athm_sync --health``: is the sync running and succeeding?

For monitoring, load balancers' probes and cron's own checks. :func:`check_health` is the one
place that decides; the command, and anything else that reports health, shows its answer.
Healthy when none of these holds (each one is a :class:`Problem`, by its ``kind``):

- ``no_recent_success``: no run finished with exit 0 within ``max_age``;
- ``latest_run_failed``: the latest run that ended (a run stopped by SIGTERM or SIGINT does
  not count either way) did not exit 0: a payment it could not check, a report that failed,
  signals it could not send, a lost database connection... (its errors name them);
- ``receivers_failing``: a signal receiver raised and is still being retried
  (:mod:`athm_sync.outbox`);
- ``receivers_given_up``: a receiver was given up and no person has acknowledged it yet
  (``--acknowledge`` or the admin), or delivered it since (``--redeliver``);
- ``payments_failing``: an open payment could not be checked at its last try (ATH Móvil
  failed or answered something invalid): it stays a problem until a check of it succeeds or
  it is given up, even while runs that do not reach it (it waits out its backoff) exit 0;
- ``report_failing``: the last scan of the transaction report for refunds failed; it stays a
  problem until a scan succeeds.

It also says how many payments were given up (still open after ``MAX_AGE``) or held
(``MISMATCHED``) within ``max_age``, and how many receivers were given up then: they need a
person, but do not make the sync unhealthy. Only the database is read, never ATH Móvil: five
indexed queries when healthy, up to seven when not, however long the history.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from django.db.models import Count, Q

from athm_sync import clock, outbox
from athm_sync.managers import StatusIn
from athm_sync.models import Payment, PaymentEvent, ReportScan, SyncRun
from athm_sync.report import REFUNDS
from athm_sync.stopping import SIGNAL_EXIT_CODES

DEFAULT_MAX_AGE = timedelta(minutes=10)
_DURATION = re.compile(r"(\d+(?:\.\d+)?)\s*([smhd]?)")
_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(text: str) -> timedelta:
    """``"90s"``, ``"10m"``, ``"2h"``, ``"1d"`` or plain seconds; raises ``ValueError``."""
    match = _DURATION.fullmatch(text.strip().lower())
    if not match or float(match.group(1)) <= 0:
        raise ValueError(f"must be a duration like 90s, 10m, 2h or 1d, not {text!r}")
    return timedelta(seconds=float(match.group(1)) * _UNITS[match.group(2)])


class ProblemKind:
    """What makes the sync unhealthy (the ``kind`` of a :class:`Problem`)."""

    NO_RECENT_SUCCESS = "no_recent_success"
    LATEST_RUN_FAILED = "latest_run_failed"
    RECEIVERS_FAILING = "receivers_failing"
    RECEIVERS_GIVEN_UP = "receivers_given_up"
    PAYMENTS_FAILING = "payments_failing"
    REPORT_FAILING = "report_failing"


@dataclass(frozen=True)
class Problem:
    """One reason the sync is unhealthy: its kind and the words that say it."""

    kind: str
    message: str

    def as_json(self) -> dict[str, str]:
        return {"kind": self.kind, "message": self.message}


@dataclass(frozen=True)
class Health:
    """The answer: healthy or not, why (``problems``, and ``reason`` in words), and what needs
    a person."""

    healthy: bool
    reason: str
    last_success: datetime | None
    given_up: int
    held: int
    max_age: timedelta
    receivers_failing: int = 0
    receivers_failing_since: datetime | None = None
    receivers_given_up: int = 0
    problems: tuple[Problem, ...] = ()
    # The latest run that ended (not stopped by a signal): its exit code and end.
    latest_run_exit_code: int | None = None
    latest_run_finished_at: datetime | None = None
    receivers_given_up_unacknowledged: int = 0
    payments_failing: int = 0
    # The last refund scan's error, "" when it succeeded (or none ran yet).
    report_error: str = ""

    @property
    def exit_code(self) -> int:
        """What ``--health`` exits with: 0 healthy, 1 not."""
        return 0 if self.healthy else 1

    def as_json(self) -> dict[str, Any]:
        return {
            "healthy": self.healthy,
            "reason": self.reason,
            "last_success": self.last_success.isoformat() if self.last_success else None,
            "given_up": self.given_up,
            "held": self.held,
            "max_age_seconds": self.max_age.total_seconds(),
            "receivers_failing": self.receivers_failing,
            "receivers_failing_since": (
                self.receivers_failing_since.isoformat() if self.receivers_failing_since else None
            ),
            "receivers_given_up": self.receivers_given_up,
            "problems": [problem.as_json() for problem in self.problems],
            "latest_run_exit_code": self.latest_run_exit_code,
            "latest_run_finished_at": (
                self.latest_run_finished_at.isoformat() if self.latest_run_finished_at else None
            ),
            "receivers_given_up_unacknowledged": self.receivers_given_up_unacknowledged,
            "payments_failing": self.payments_failing,
            "report_error": self.report_error,
            "exit_code": self.exit_code,
        }


def check_health(max_age: timedelta = DEFAULT_MAX_AGE, now: datetime | None = None) -> Health:
    """Whether the sync is healthy (see the module for every rule), and why not. Reads only
    the database: five indexed queries when healthy, up to seven when not."""
    now = now or clock.now()
    since = now - max_age
    latest = (
        SyncRun.objects.filter(finished_at__isnull=False)
        .exclude(exit_code__in=SIGNAL_EXIT_CODES)
        .order_by("-started_at")
        .only("started_at", "finished_at", "exit_code", "errors")
        .first()
    )
    success = latest
    if latest is None or latest.exit_code != 0:
        success = (
            SyncRun.objects.filter(exit_code=0, finished_at__isnull=False)
            .order_by("-started_at")
            .only("started_at", "finished_at")
            .first()
        )
    failing_payments = Q(
        StatusIn(Payment.ACTIVE_STATUSES), given_up_at__isnull=True, failures__gt=0
    )
    payments = Payment.objects.filter(Q(given_up_at__gte=since) | failing_payments).aggregate(
        given_up=Count("pk", filter=Q(given_up_at__gte=since)),
        failing=Count("pk", filter=failing_payments),
    )
    given_up, payments_failing = payments["given_up"], payments["failing"]
    held = PaymentEvent.objects.filter(
        kind=PaymentEvent.Kind.MISMATCHED, created_at__gte=since
    ).count()
    receivers = outbox.status(given_up_since=since)
    report_error = (
        ReportScan.objects.filter(name=REFUNDS).values_list("last_error", flat=True).first() or ""
    )

    problems: list[Problem] = []
    if receivers.failing:
        first = receivers.failing_since
        problems.append(
            Problem(
                ProblemKind.RECEIVERS_FAILING,
                f"{receivers.failing} signal receiver(s) failing, the first since "
                f"{first:%Y-%m-%d %H:%M:%S} UTC ({_words(now - first)} ago)",
            )
        )
    if receivers.given_up_unacknowledged:
        first = receivers.given_up_unacknowledged_since
        problems.append(
            Problem(
                ProblemKind.RECEIVERS_GIVEN_UP,
                f"{receivers.given_up_unacknowledged} signal receiver(s) given up and not "
                f"acknowledged, the first at {first:%Y-%m-%d %H:%M:%S} UTC (settle their orders, "
                "then manage.py athm_sync --acknowledge, or the admin)",
            )
        )
    recent = success is not None and success.finished_at >= since
    if not recent:
        problems.append(
            Problem(ProblemKind.NO_RECENT_SUCCESS, _no_recent_success(success, now, max_age))
        )
    if latest is not None and latest.exit_code != 0:
        problems.append(
            Problem(ProblemKind.LATEST_RUN_FAILED, f"the latest run {_describe(latest)}")
        )
    if payments_failing:
        problems.append(
            Problem(
                ProblemKind.PAYMENTS_FAILING,
                f"{payments_failing} open payment(s) could not be checked at their last try "
                "(the admin shows each one's last error)",
            )
        )
    if report_error:
        problems.append(
            Problem(
                ProblemKind.REPORT_FAILING,
                f"the last refund scan failed: {' '.join(report_error.split())[:200]}",
            )
        )

    needs_a_person = f"{given_up} payment(s) given up and {held} held in the last {_words(max_age)}"
    if receivers.given_up:
        needs_a_person += f"; {receivers.given_up} signal receiver(s) given up in that time"
    words = [problem.message for problem in problems]
    if recent:
        words.append(f"the last successful run finished {_words(now - success.finished_at)} ago")
    return Health(
        healthy=not problems,
        reason="; ".join([*words, needs_a_person]),
        last_success=success.finished_at if success is not None else None,
        given_up=given_up,
        held=held,
        max_age=max_age,
        receivers_failing=receivers.failing,
        receivers_failing_since=receivers.failing_since,
        receivers_given_up=receivers.given_up,
        problems=tuple(problems),
        latest_run_exit_code=latest.exit_code if latest is not None else None,
        latest_run_finished_at=latest.finished_at if latest is not None else None,
        receivers_given_up_unacknowledged=receivers.given_up_unacknowledged,
        payments_failing=payments_failing,
        report_error=report_error,
    )


def _no_recent_success(success: SyncRun | None, now: datetime, max_age: timedelta) -> str:
    """Why no success is recent enough, and whether a run is under way (one more query)."""
    if success is None:
        words = "no run has finished successfully yet"
    else:
        ago = _words(now - success.finished_at)
        words = f"the last successful run finished {ago} ago, more than {_words(max_age)}"
    newest = SyncRun.objects.order_by("-started_at").only("started_at", "finished_at").first()
    if newest is not None and newest.finished_at is None:
        words += f"; the latest run {_describe(newest)}"
    return words


def _describe(run: SyncRun) -> str:
    if run.finished_at is None:
        return f"started {run.started_at:%Y-%m-%d %H:%M:%S} UTC and has not finished"
    errors = run.errors or []
    first = f": {errors[0].get('reason', '')}"[:160] if errors else ""
    return f"ended with exit {run.exit_code}, {len(errors)} error(s){first}"


def _words(span: timedelta) -> str:
    seconds = int(span.total_seconds())
    if seconds < 120:
        return f"{seconds} s"
    if seconds < 7200:
        return f"{seconds // 60} min"
    if seconds < 172800:
        return f"{seconds // 3600} h"
    return f"{seconds // 86400} days"
