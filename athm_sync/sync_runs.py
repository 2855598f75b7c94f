"""The ``SyncRun`` rows: a run's record made at its start, its end written, and the runs that
never wrote theirs (killed, their connection gone for good) closed by a later run.

While a run lives, :class:`athm_sync.claims.LeaseKeeper` pushes its ``alive_until`` ahead;
once that has run out, :func:`close_abandoned_runs` gives it exit ``EXIT_ABANDONED``.
"""

from __future__ import annotations

import logging
import os
import socket
import uuid
from datetime import datetime

from django.db.models import Q

from athm_sync import claims, clock
from athm_sync.database import run_locked
from athm_sync.models import SyncRun
from athm_sync.run_options import RunOptions
from athm_sync.run_report import EXIT_ABANDONED, ErrorKind, RunReport

# The name these lines were always logged under (docs/operations.md).
logger = logging.getLogger("athm_sync.runner")

# At most this many abandoned runs are closed by one run (there is rarely more than one).
ABANDONED_BATCH = 100


def new_run_id() -> str:
    """``host:pid:random``: who holds a claim, readable in the admin."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def start(options: RunOptions) -> SyncRun:
    """Record a run's start, alive for one ``CLAIM_LEASE``."""
    # Retried like every write of a run: SQLite's one writer may be another run.
    return run_locked(
        lambda: SyncRun.objects.create(
            host=socket.gethostname(),
            pid=os.getpid(),
            options=options.as_dict(),
            alive_until=clock.now() + claims.CLAIM_LEASE,
        )
    )


def record_end(sync_run: SyncRun, report: RunReport) -> None:
    """Write ``report``'s counts, errors, exit code and calls on the run's row, now."""
    sync_run.finished_at = clock.now()
    sync_run.checked = report.checked
    sync_run.unchanged = report.unchanged
    sync_run.transitions = dict(report.transitions)
    sync_run.signals_sent = report.signals_sent
    sync_run.receiver_errors = report.receiver_errors
    sync_run.errors = list(report.errors)
    if report.errors_not_listed:
        sync_run.errors.append(
            {
                "ecommerce_id": "",
                "reason": f"and {report.errors_not_listed} more error(s)",
                "kind": ErrorKind.NOT_LISTED,
            }
        )
    sync_run.exit_code = report.exit_code
    sync_run.calls = dict(report.api_calls)
    run_locked(
        lambda: sync_run.save(
            update_fields=[
                "finished_at",
                "checked",
                "unchanged",
                "transitions",
                "signals_sent",
                "receiver_errors",
                "errors",
                "exit_code",
                "calls",
            ]
        )
    )


def close_abandoned_runs(closed_by: str, now: datetime | None = None) -> int:
    """Record the end of the runs that never recorded theirs and stopped renewing
    ``alive_until`` (killed, or their database connection gone for good): exit code
    ``EXIT_ABANDONED`` and an error saying so, so that ``--health`` and the admin never show a
    run as running forever. A run from before ``alive_until`` existed counts from its start.
    Returns how many were closed; one indexed query when there are none."""
    now = now or clock.now()
    late = now - claims.CLAIM_LEASE
    abandoned = SyncRun.objects.filter(finished_at__isnull=True).filter(
        Q(alive_until__lt=now) | Q(alive_until__isnull=True, started_at__lt=late)
    )
    closed = 0
    for run in abandoned.order_by("started_at")[:ABANDONED_BATCH]:
        seen = run.alive_until or run.started_at
        reason = (
            f"abandoned: the run (pid {run.pid} on {run.host or '?'}) ended without recording "
            f"its end; last alive {seen:%Y-%m-%d %H:%M:%S} UTC, closed by run {closed_by}"
        )
        # Only if it is still unfinished: a live run that was late renewing finishes itself.
        closed += run_locked(
            lambda run=run, reason=reason: SyncRun.objects.filter(
                pk=run.pk, finished_at__isnull=True
            ).update(
                finished_at=now,
                exit_code=EXIT_ABANDONED,
                errors=[
                    *(run.errors or []),
                    {"ecommerce_id": "", "reason": reason, "kind": ErrorKind.ABANDONED},
                ],
            )
        )
    if closed:
        logger.warning("Closed %d abandoned run(s) that never recorded their end", closed)
    return closed
