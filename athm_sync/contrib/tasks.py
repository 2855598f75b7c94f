"""Django's tasks framework: one sync run (:data:`sync`) and one payment (:data:`sync_payment`).

``pip install "django-athm-sync[tasks]"``. On Django 6.0 and later the framework is
``django.tasks``, part of Django; on Django 5.2 it is the ``django-tasks`` package
(``django_tasks``), which the extra installs. Either way the tasks are made with the
framework's ``@task()`` when this module is imported, for the ``default`` backend of the
``TASKS`` setting; ``sync.using(backend="other")`` picks another. Django's built-in backends
only run tasks immediately (in the caller) or not at all: a real queue needs a backend with a
worker, such as ``django-tasks-db`` (``manage.py db_worker``).

Enqueue them, or schedule them from whatever scheduler the shop has::

    from athm_sync.contrib.tasks import sync, sync_payment

    sync.enqueue()  # one run, skipped if another is going on
    sync_payment.enqueue(str(payment.pk))

What they do and return is :mod:`athm_sync.contrib.jobs`, the same as the Celery tasks': the
``--json`` summary, ``{"skipped": True, ...}`` when another run holds the run lock, a failed
result with :class:`athm_sync.runner.CannotRun` for the command's exit 2.
"""

from __future__ import annotations

from typing import Any

try:
    from django.tasks import task  # Django 6.0+

    FRAMEWORK = "django.tasks"
except ImportError:
    try:
        from django_tasks import task  # the backport, on Django 5.2

        FRAMEWORK = "django_tasks"
    except ImportError as error:
        raise ImportError(
            "athm_sync.contrib.tasks needs Django's tasks framework: Django 6.0 or later, or "
            'on Django 5.2 the django-tasks package: pip install "django-athm-sync[tasks]"'
        ) from error

from athm_sync.contrib import jobs


@task()
def sync(limit: int | None = None, workers: int | None = None) -> dict[str, Any]:
    """One ``manage.py athm_sync`` run (``--limit``, ``--workers``); skipped when another run
    holds the run lock. Returns the JSON-able summary; see
    :func:`athm_sync.contrib.jobs.sync_run`."""
    return jobs.sync_run(limit=limit, workers=workers)


@task()
def sync_payment(ecommerce_id: str) -> dict[str, Any]:
    """Check one stored payment now; see :func:`athm_sync.contrib.jobs.sync_one`."""
    return jobs.sync_one(ecommerce_id)


__all__ = ["FRAMEWORK", "sync", "sync_payment"]
