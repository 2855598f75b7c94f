"""Celery tasks: one sync run (``athm_sync.sync``) and one payment (``athm_sync.sync_payment``).

``pip install "django-athm-sync[celery]"``. The tasks are ``shared_task``s, so they bind to
the shop's own Celery app; have it find them with ``app.autodiscover_tasks(["athm_sync.contrib"],
related_name="celery")`` or by importing this module (e.g. in ``CELERY_IMPORTS``). Merge
:data:`BEAT_SCHEDULE` into ``app.conf.beat_schedule`` for a run every minute.

What each task does and returns is :mod:`athm_sync.contrib.jobs`: the command's ``--json``
summary, ``{"skipped": True, ...}`` when another run holds the run lock, and a failure with
:class:`athm_sync.runner.CannotRun` (the command's exit 2: bad settings, credentials rejected).
``CannotRun`` and ``ValueError`` (a bad payment id) are the tasks' ``throws``: Celery records
the failure and logs it in one line, without a traceback. No task here retries by itself: the
next beat is the retry. The module imports nothing of the app until a task runs, so the shop's
Celery module may import :data:`BEAT_SCHEDULE` before Django is set up.

A worker's warm shutdown stops a run between payments (claims released, ``SyncRun`` finished,
the summary's ``"stopped"`` says why): in the task's own process by SIGTERM/SIGINT (see
:mod:`athm_sync.contrib.jobs`), and in the worker's process by ``worker_shutting_down``.
"""

from __future__ import annotations

import sys
from typing import Any

try:
    from celery import Task, shared_task
    from celery.signals import worker_shutting_down
except ImportError as error:
    raise ImportError(
        'athm_sync.contrib.celery needs Celery: pip install "django-athm-sync[celery]"'
    ) from error

# Nothing of the app is imported here, only in the tasks' bodies: a shop's Celery module (the
# one its project package imports, before Django's apps are ready) may import BEAT_SCHEDULE.

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


class _SyncTask(Task):
    """The tasks' base: the command's exit 2 (``CannotRun``) and a bad id (``ValueError``) are
    expected failures, recorded and logged in one line by Celery, never retried."""

    @property
    def throws(self) -> tuple[type[BaseException], ...]:  # type: ignore[override]
        from athm_sync.runner import CannotRun  # the app's models: only once Django is set up

        return (CannotRun, ValueError)


@worker_shutting_down.connect(weak=False, dispatch_uid="athm_sync.stop_runs")
def _stop_runs(sig: str | None = None, **kwargs: Any) -> None:
    """The worker is shutting down: a run going on in this process (the solo or threads pool)
    stops between payments instead of holding the shutdown up to its end."""
    jobs = sys.modules.get("athm_sync.contrib.jobs")  # not imported: no run is going on
    if jobs is not None:
        jobs.stop_runs(str(sig or "SIGTERM"))


@shared_task(name="athm_sync.sync", base=_SyncTask)
def sync(limit: int | None = None, workers: int | None = None) -> dict[str, Any]:
    """One ``manage.py athm_sync`` run (``--limit``, ``--workers``); skipped when another run
    holds the run lock. Returns the JSON-able summary; see
    :func:`athm_sync.contrib.jobs.sync_run`."""
    from athm_sync.contrib import jobs

    return jobs.sync_run(limit=limit, workers=workers)


@shared_task(name="athm_sync.sync_payment", base=_SyncTask)
def sync_payment(ecommerce_id: str) -> dict[str, Any]:
    """Check one stored payment now (a "thank you" page that should not wait on ATH Móvil);
    see :func:`athm_sync.contrib.jobs.sync_one`."""
    from athm_sync.contrib import jobs

    return jobs.sync_one(ecommerce_id)


__all__ = ["BEAT_SCHEDULE", "sync", "sync_payment"]
