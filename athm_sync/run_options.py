"""A run's options: what to check and how, parsed and validated before anything is written.

The command (:mod:`athm_sync.management.commands.athm_sync`), ``--watch`` and the task queues
(:mod:`athm_sync.contrib`) build a :class:`RunOptions`; :func:`validate_options` refuses one
that cannot work with :class:`CannotRun` (exit 2), in one line.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from datetime import time as dt_time
from typing import Any

from athm_sync import clock
from athm_sync.models import Payment
from athm_sync.normalize import PUERTO_RICO


class CannotRun(Exception):
    """The run cannot start or cannot go on (exit 2): bad options, credentials rejected."""


@dataclass(frozen=True)
class RunOptions:
    """What to check and how; validated by :func:`validate_options`."""

    dry_run: bool = False
    ecommerce_ids: tuple[uuid.UUID, ...] = ()
    limit: int | None = None
    workers: int | None = None
    # A backfill from the transaction report instead of a check (both dates, Puerto Rico's).
    from_date: date | None = None
    to_date: date | None = None
    signals: bool = True

    def as_dict(self) -> dict[str, Any]:
        return {
            "dry_run": self.dry_run,
            "ecommerce_ids": [str(pk) for pk in self.ecommerce_ids],
            "limit": self.limit,
            "workers": self.workers,
            "from_date": self.from_date.isoformat() if self.from_date else None,
            "to_date": self.to_date.isoformat() if self.to_date else None,
            "signals": self.signals,
        }

    @property
    def backfill(self) -> bool:
        return self.from_date is not None


def parse_ecommerce_ids(values: Iterable[str]) -> tuple[uuid.UUID, ...]:
    """The given ids as UUIDs, in order, without repeats; raises :class:`CannotRun`."""
    ids: list[uuid.UUID] = []
    for value in values:
        try:
            pk = uuid.UUID(str(value).strip())
        except ValueError:
            raise CannotRun(f"--ecommerce-id {value!r} is not a UUID") from None
        if pk not in ids:
            ids.append(pk)
    return tuple(ids)


def parse_date(option: str, value: str | None) -> date | None:
    """``--from-date`` / ``--to-date`` as a date; raises :class:`CannotRun` naming the option."""
    if value is None:
        return None
    text = value.strip()
    try:
        if len(text) != 10:
            raise ValueError
        return date.fromisoformat(text)
    except ValueError:
        raise CannotRun(f"{option} must be a date like 2026-01-31, not {value!r}") from None


def validate_options(options: RunOptions) -> None:
    """Refuse options that cannot work before anything is written; raises :class:`CannotRun`."""
    _validate_backfill(options)
    if options.workers is not None and options.workers < 1:
        raise CannotRun(f"--workers must be at least 1, not {options.workers}")
    if options.limit is not None and options.limit < 1:
        raise CannotRun(f"--limit must be at least 1, not {options.limit}")
    if options.ecommerce_ids:
        stored = set(
            Payment.objects.filter(pk__in=options.ecommerce_ids).values_list("pk", flat=True)
        )
        missing = [str(pk) for pk in options.ecommerce_ids if pk not in stored]
        if missing:
            raise CannotRun(f"--ecommerce-id: no stored payment {', '.join(missing)}")


def _validate_backfill(options: RunOptions) -> None:
    if not options.signals and not options.backfill:
        raise CannotRun("--no-signals only goes with --from-date and --to-date (a backfill)")
    if (options.from_date is None) != (options.to_date is None):
        raise CannotRun("a backfill needs both --from-date and --to-date")
    if not options.backfill:
        return
    today = clock.now().astimezone(PUERTO_RICO).date()
    if options.from_date > options.to_date:
        raise CannotRun(f"--from-date {options.from_date} is after --to-date {options.to_date}")
    if options.to_date > today:
        raise CannotRun(
            f"--to-date {options.to_date} is in the future (today is {today} in Puerto Rico)"
        )
    for name, given in (
        ("--dry-run", options.dry_run),
        ("--ecommerce-id", options.ecommerce_ids),
        ("--limit", options.limit is not None),
    ):
        if given:
            raise CannotRun(f"{name} does not go with a backfill (--from-date, --to-date)")


def backfill_range(options: RunOptions, now: datetime) -> tuple[datetime, datetime]:
    """The backfill's dates as aware UTC datetimes: from the start of ``from_date`` to the
    end of ``to_date`` in Puerto Rico (ATH Móvil's days), or to ``now`` if sooner."""
    start = datetime.combine(options.from_date, dt_time.min, PUERTO_RICO)
    end = datetime.combine(options.to_date + timedelta(days=1), dt_time.min, PUERTO_RICO)
    return start.astimezone(UTC), min(end - timedelta(seconds=1), now)
