"""``manage.py athm_sync --health``: is the sync running and succeeding?

For monitoring, load balancers' probes and cron's own checks: healthy when a run finished with
exit 0 within ``max_age`` and no signal receiver is failing (one that raised and is still
retried, :mod:`athm_sync.outbox`). It also says how many payments were given up (still open
after ``MAX_AGE``) or held (``MISMATCHED``) within ``max_age``, and how many receivers were
given up then: they need a person.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from athm_sync import clock, outbox
from athm_sync.models import Payment, PaymentEvent, SyncRun

DEFAULT_MAX_AGE = timedelta(minutes=10)
_DURATION = re.compile(r"(\d+(?:\.\d+)?)\s*([smhd]?)")
_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(text: str) -> timedelta:
    """``"90s"``, ``"10m"``, ``"2h"``, ``"1d"`` or plain seconds; raises ``ValueError``."""
    match = _DURATION.fullmatch(text.strip().lower())
    if not match or float(match.group(1)) <= 0:
        raise ValueError(f"must be a duration like 90s, 10m, 2h or 1d, not {text!r}")
    return timedelta(seconds=float(match.group(1)) * _UNITS[match.group(2)])


@dataclass(frozen=True)
class Health:
    """The answer: healthy or not, why, and what needs a person."""

    healthy: bool
    reason: str
    last_success: datetime | None
    given_up: int
    held: int
    max_age: timedelta
    receivers_failing: int = 0
    receivers_failing_since: datetime | None = None
    receivers_given_up: int = 0

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
        }


def check_health(max_age: timedelta = DEFAULT_MAX_AGE, now: datetime | None = None) -> Health:
    """Whether a run finished with exit 0 within ``max_age`` and no receiver is failing; four
    queries, each through an index."""
    now = now or clock.now()
    since = now - max_age
    success = (
        SyncRun.objects.filter(exit_code=0, finished_at__isnull=False)
        .order_by("-started_at")
        .only("finished_at")
        .first()
    )
    given_up = Payment.objects.filter(given_up_at__gte=since).count()
    held = PaymentEvent.objects.filter(
        kind=PaymentEvent.Kind.MISMATCHED, created_at__gte=since
    ).count()
    receivers = outbox.status(given_up_since=since)
    needs_a_person = f"{given_up} payment(s) given up and {held} held in the last {_words(max_age)}"
    if receivers.given_up:
        needs_a_person += f"; {receivers.given_up} signal receiver(s) given up in that time"
    found = {
        "receivers_failing": receivers.failing,
        "receivers_failing_since": receivers.failing_since,
        "receivers_given_up": receivers.given_up,
    }
    failing = ""
    if receivers.failing:
        first = receivers.failing_since
        failing = (
            f"{receivers.failing} signal receiver(s) failing, the first since "
            f"{first:%Y-%m-%d %H:%M:%S} UTC ({_words(now - first)} ago); "
        )
    if success is not None and success.finished_at >= since:
        ago = _words(now - success.finished_at)
        reason = f"{failing}the last successful run finished {ago} ago; {needs_a_person}"
        healthy = not receivers.failing
        return Health(healthy, reason, success.finished_at, given_up, held, max_age, **found)
    latest = SyncRun.objects.order_by("-started_at").first()
    if success is None:
        reason = "no run has finished successfully yet"
    else:
        reason = f"the last successful run finished {_words(now - success.finished_at)} ago"
    reason += f", more than {_words(max_age)}" if success is not None else ""
    if latest is not None and (success is None or latest.pk != success.pk):
        reason += f"; the latest run {_describe(latest)}"
    reason = f"{failing}{reason}; {needs_a_person}"
    last_success = success.finished_at if success else None
    return Health(False, reason, last_success, given_up, held, max_age, **found)


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
