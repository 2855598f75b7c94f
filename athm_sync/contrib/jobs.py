"""What a queued task does, for every task queue: one sync run, or one payment.

:mod:`athm_sync.contrib.celery` and :mod:`athm_sync.contrib.tasks` are thin wrappers around
:func:`sync_run` and :func:`sync_one`, which call the same code as ``manage.py athm_sync``
(:class:`athm_sync.runner.Runner`) and :func:`athm_sync.sync_payment`: nothing is decided here
that the command or the other doors decide differently.

How the command's exit codes become task results:

- exit 0 and exit 1 (some payments could not be checked, or a signal receiver is failing;
  both are retried by the next run) are a normal result: the JSON-able ``--json`` summary,
  with its ``exit_code``, plus ``"skipped": False``;
- exit 2 (bad ``ATHM_SYNC`` settings or options, credentials rejected) raises
  :class:`athm_sync.runner.CannotRun` with the command's one-line message: the task fails.
  Nothing retries it by itself; the next scheduled run tries again (and fails the same way
  until a person fixes the settings), so a bad configuration is one failure per tick, not a
  retry storm;
- a run that finds another run holding the run lock returns at once, without asking ATH Móvil:
  ``{"skipped": True, "reason": ..., "held_by": ..., "lock_expires_at": ...}``;
- a run stopped by its worker's shutdown (below) is a normal result too: the summary with
  ``"stopped"`` (``"SIGTERM"``...) and its ``exit_code`` (143...); so is a run whose database
  connection died (exit 1, the error in ``errors``).

How a worker's shutdown stops a run between payments (claims released, ``SyncRun`` finished):

- a worker that runs the task in its main thread (Celery's prefork children and solo pool,
  Django's ``db_worker``) delivers SIGTERM and SIGINT to it: :func:`sync_run` turns them into
  a stop request for the run's duration, and still calls the worker's own handler, so the
  worker shuts down after this task as it would have; the handlers are put back afterwards;
- for a task in another thread (Celery's threads pool), :func:`stop_runs` asks every run of
  the process to stop; :mod:`athm_sync.contrib.celery` calls it on ``worker_shutting_down``.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from django.core.exceptions import ImproperlyConfigured

from athm_sync import locks
from athm_sync.client import AuthenticationError
from athm_sync.conf import AthmSyncSettings, get_settings, unknown_keys
from athm_sync.managers import validate_ecommerce_id
from athm_sync.models import Payment
from athm_sync.runner import CannotRun, ConnectionLost, Runner, RunOptions, new_run_id
from athm_sync.stopping import StopRequest, signals_stop

logger = logging.getLogger("athm_sync.contrib")

# The stop requests of the runs going on in this process, for stop_runs().
_running: set[StopRequest] = set()
_running_lock = threading.Lock()


def stop_runs(reason: str = "SIGTERM") -> int:
    """Ask every :func:`sync_run` going on in this process to stop between payments, from any
    thread (a worker's shutdown hook); ``reason`` is what their summaries say in
    ``"stopped"``. Returns how many runs were asked."""
    with _running_lock:
        running = list(_running)
    for stop in running:
        stop.request(reason)
    return len(running)


def _settings() -> AthmSyncSettings:
    """The validated settings, or :class:`CannotRun` with the command's message."""
    try:
        conf = get_settings()
    except ImproperlyConfigured as error:
        raise CannotRun(f"bad ATHM_SYNC setting: {error}") from None
    unknown = unknown_keys()
    if unknown:
        logger.warning("ATHM_SYNC has unknown keys, ignored: %s (a typo?)", ", ".join(unknown))
    return conf


def _count(name: str, value: Any) -> int | None:
    """A ``limit`` or ``workers`` argument: ``None`` or a whole number (JSON has no types to
    enforce it, so a string from a queue is refused here, before any run starts)."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise CannotRun(f"{name} must be a whole number, not {value!r}")
    return value


def sync_run(*, limit: int | None = None, workers: int | None = None) -> dict[str, Any]:
    """One ``manage.py athm_sync`` run, unless another run holds the run lock.

    ``limit`` and ``workers`` are the command's ``--limit`` and ``--workers``. Returns the
    ``--json`` summary plus ``"skipped": False`` and ``sync_run_id`` (the ``SyncRun`` row), or
    a ``"skipped": True`` document when another run is going on. Raises
    :class:`~athm_sync.runner.CannotRun` for the command's exit 2.

    The run lock (:data:`athm_sync.locks.RUN_LOCK`) is a database lease, held and renewed for
    the whole run and freed at its end, so at most one task run goes at a time across every
    worker and host. Runs of the command itself (cron, ``--watch``) do not take it: overlap is
    safe anyway (payment claims), the lock only saves the work of a second run.
    """
    conf = _settings()
    options = RunOptions(limit=_count("limit", limit), workers=_count("workers", workers))
    lease = locks.Lease(locks.RUN_LOCK, new_run_id())
    if not lease.acquire():
        held = locks.current_holder(locks.RUN_LOCK)
        reason = "another athm_sync run holds the run lock"
        logger.info("athm_sync run skipped: %s (%s)", reason, held.holder if held else "?")
        return {
            "skipped": True,
            "reason": reason,
            "held_by": held.holder if held else "",
            "lock_expires_at": held.expires_at.isoformat() if held else None,
        }
    stop = StopRequest()
    with _running_lock:
        _running.add(stop)
    try:
        with lease.kept(), signals_stop(stop, chain=True):
            runner = Runner(options, conf=conf, should_stop=stop)
            try:
                report = runner.run()
            except ConnectionLost as error:
                logger.error("athm_sync run: %s", error)
                report = runner.report
    finally:
        with _running_lock:
            _running.discard(stop)
        lease.release()
    return {**report.as_json(), "skipped": False, "sync_run_id": report.sync_run_id}


def sync_one(ecommerce_id: Any) -> dict[str, Any]:
    """Check one stored payment now, through :func:`athm_sync.sync_payment` (signals included).

    Returns ``{"ecommerce_id", "status", "transitions", "signals_sent", "receiver_errors",
    "error"}``: ``transitions`` lists what changed (``["completed"]``), ``error`` is why ATH
    Móvil could not answer (recorded on the payment, which the next run checks again), ``""``
    when it did. Raises ``ValueError`` for an id that is not a UUID or not a stored payment,
    and :class:`~athm_sync.runner.CannotRun` for bad settings or rejected credentials. It does
    not take the run lock: one payment's check is safe beside a run, as a webhook's is.
    """
    from athm_sync import sync_payment

    pk = validate_ecommerce_id(ecommerce_id)  # ValueError: "ecommerce_id must be a UUID, ..."
    _settings()
    try:
        outcome = sync_payment(pk)
    except Payment.DoesNotExist:
        raise ValueError(f"no stored payment {pk}") from None
    except AuthenticationError as error:
        raise CannotRun(f"ATH Móvil rejected the credentials: {error}") from None
    return {
        "ecommerce_id": str(pk),
        "status": str(outcome.payment.status),
        "transitions": [str(event.kind) for event in outcome.events],
        "signals_sent": outcome.signals_sent,
        "receiver_errors": outcome.receiver_errors,
        "error": outcome.error,
    }


__all__ = ["stop_runs", "sync_one", "sync_run"]
