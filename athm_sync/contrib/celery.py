"""Celery tasks: one sync run (``athm_sync.sync``) and one payment (``athm_sync.sync_payment``).

``pip install "django-athm-sync[celery]"``. The tasks are ``shared_task``s, so they bind to
the shop's own Celery app; have it find them with ``app.autodiscover_tasks(["athm_sync.contrib"],
related_name="celery")`` or by importing this module (e.g. in ``CELERY_IMPORTS``). Merge
:data:`BEAT_SCHEDULE` into ``app.conf.beat_schedule`` for a run every minute.

What each task does and returns is :mod:`athm_sync.contrib.jobs`: the command's ``--json``
summary, ``{"skipped": True, ...}`` when another run holds the run lock, and a failure with
:class:`athm_sync.runner.CannotRun` (the command's exit 2: bad settings, credentials rejected).
``CannotRun`` and ``ValueError`` (a bad payment id) are in the tasks' ``throws``: Celery
records the failure and logs it in one line, without a traceback, and never retries them (no
task here retries by itself: the next beat is the retry).
"""

from __future__ import annotations

from typing import Any

try:
    from celery import shared_task
except ImportError as error:  # pragma: no cover - exercised in a process without celery
    raise ImportError(
        'athm_sync.contrib.celery needs Celery: pip install "django-athm-sync[celery]"'
    ) from error

from athm_sync.contrib import jobs
from athm_sync.runner import CannotRun

# Merge into your Celery app's beat schedule: app.conf.beat_schedule = {**BEAT_SCHEDULE, ...}
BEAT_SCHEDULE: dict[str, dict[str, Any]] = {
    "athm-sync-every-minute": {
        "task": "athm_sync.sync",
        "schedule": 60.0,
        # A tick still queued after this long is dropped: the next one does the same work,
        # and workers back from an outage do not work through a backlog of stale runs.
        "options": {"expires": 55},
    },
}


@shared_task(name="athm_sync.sync", throws=(CannotRun,))
def sync(limit: int | None = None, workers: int | None = None) -> dict[str, Any]:
    """One ``manage.py athm_sync`` run (``--limit``, ``--workers``); skipped when another run
    holds the run lock. Returns the JSON-able summary; see
    :func:`athm_sync.contrib.jobs.sync_run`."""
    return jobs.sync_run(limit=limit, workers=workers)


@shared_task(name="athm_sync.sync_payment", throws=(CannotRun, ValueError))
def sync_payment(ecommerce_id: str) -> dict[str, Any]:
    """Check one stored payment now (a "thank you" page that should not wait on ATH Móvil);
    see :func:`athm_sync.contrib.jobs.sync_one`."""
    return jobs.sync_one(ecommerce_id)


__all__ = ["BEAT_SCHEDULE", "sync", "sync_payment"]
