"""One run of ``manage.py athm_sync``: claim due payments, ask ATH Móvil, apply, count.

The command parses options and prints; this module does the work, so it can be called from
other code (a ``--watch`` loop, a Celery task) and tested without parsing argv.

Threads: only :func:`athm_sync.reconcile.observe` (network, no database) runs in the worker
pool. Claims, :func:`~athm_sync.reconcile.apply` and every other query run in the calling
thread, so a run uses one database connection however many workers it has.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import socket
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from datetime import time as dt_time
from typing import Any

from django.db import DatabaseError
from django.db.models import Q

from athm_sync import (
    bulk_checks,
    claims,
    clock,
    database,
    inbox,
    outbox,
    reconcile,
    retention,
    sending,
)
from athm_sync import report as transaction_report
from athm_sync.client import ATHMovilClient, ATHMovilError, AuthenticationError, TransientError
from athm_sync.conf import AthmSyncSettings, get_settings
from athm_sync.database import ConnectionLost
from athm_sync.models import Payment, PaymentEvent, SyncRun
from athm_sync.normalize import PUERTO_RICO
from athm_sync.refunds import settle_intents
from athm_sync.stopping import StopNow, StopRequest, exit_code_for

logger = logging.getLogger("athm_sync.runner")

# Each kind of transition, as counted in the summary and the ``--json`` document.
TRANSITION_KINDS = ("completed", "cancelled", "expired", "refund_sent", "mismatched")
SIGNAL_FOR_KIND = {
    "completed": "payment_completed",
    "cancelled": "payment_cancelled",
    "expired": "payment_expired",
    "refund_sent": "refund_sent",
    "mismatched": "payment_mismatched",
}
BATCH_PER_WORKER = 4
# A run's report keeps counts of everything but only the first this many changes and errors,
# so that its memory does not grow with the number of payments (the counts stay exact).
SAMPLE_SIZE = 100
# After this many payments in a row that ATH Móvil failed to answer (connection failures,
# timeouts, 5xx), the run stops early: the others would only wait out the same retries.
STOP_AFTER_FAILURES = 5
EXIT_OK, EXIT_ERRORS, EXIT_CANNOT_RUN = 0, 1, 2
# The exit code a later run gives a SyncRun that never recorded its end (killed, its
# database connection gone for good) once its heartbeat (``alive_until``) has run out.
EXIT_ABANDONED = -1
# At most this many abandoned runs are closed by one run (there is rarely more than one).
ABANDONED_BATCH = 100
# What became of the pending webhook events a run verified; "pending": how many are still
# waiting because ATH Móvil could not verify them.
WEBHOOK_OUTCOMES = ("applied", "unchanged", "rejected", "ignored", "pending")


class ErrorKind:
    """The ``kind`` of each entry of a run's ``errors`` (docs/operations.md lists them): what
    went wrong, for a monitor to count (``error_kinds``) without parsing the reasons."""

    # A payment could not be checked: ATH Móvil failed or could not be reached after the
    # retries, answered something invalid, or its answer could not be stored.
    PAYMENT_NOT_CHECKED = "payment_not_checked"
    # ATH Móvil failed for STOP_AFTER_FAILURES payments in a row: the run stopped early.
    ATH_MOVIL_DOWN = "ath_movil_down"
    # Signals the database would not let be read or sent: they stay pending for the next run.
    SIGNALS_UNSENT = "signals_unsent"
    # A signal receiver that raised and is still retried; one given up that no person has
    # acknowledged (athm_sync.outbox).
    RECEIVER_FAILING = "receiver_failing"
    RECEIVER_GIVEN_UP = "receiver_given_up"
    # The transaction report failed (the refund scan or a backfill); a report row a backfill
    # could not import.
    REPORT_FAILED = "report_failed"
    REPORT_ROW_SKIPPED = "report_row_skipped"
    # The database refused a read or a write the run needed (the rest of the run went on).
    DATABASE = "database_error"
    # The database connection died mid-run: the run stopped there.
    CONNECTION_LOST = "connection_lost"
    # Exit 2: ATH Móvil rejected the credentials; the run failed unexpectedly (a bug).
    CREDENTIALS_REJECTED = "credentials_rejected"
    ABORTED = "aborted"
    # A second signal stopped the run at once.
    STOPPED = "stopped"
    # Written by a later run on a run that never recorded its end (exit -1).
    ABANDONED = "abandoned"
    # The SyncRun row's last entry when more errors were counted than listed.
    NOT_LISTED = "not_listed"


def _no_receivers() -> dict[str, Any]:
    """The ``receivers`` document of a run that retried none and found none failing."""
    return {
        "retried": 0,
        "delivered": 0,
        "given_up": 0,
        "failing": 0,
        "failing_since": None,
        "given_up_unacknowledged": 0,
    }


# A payment to ask ATH Móvil about, and whether it may be captured.
Work = tuple[Payment, bool]


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


@dataclass(frozen=True)
class Change:
    """One payment that changed (or would, in a dry run): a line of ``-v 2``."""

    ecommerce_id: Any
    kind: str
    status: str
    amount: Any
    metadata_1: str

    @property
    def signal(self) -> str:
        return SIGNAL_FOR_KIND[self.kind]


@dataclass
class RunReport:
    """The counts of one run; :meth:`as_json` is the documented ``--json`` document."""

    dry_run: bool = False
    checked: int = 0
    unchanged: int = 0
    transitions: dict[str, int] = field(default_factory=lambda: dict.fromkeys(TRANSITION_KINDS, 0))
    captured: int = 0
    given_up: int = 0
    signals_sent: int = 0
    receiver_errors: int = 0
    redispatched: int = 0
    # Receivers that raised earlier, called again by this run (athm_sync.outbox), and how many
    # are still failing once it is done.
    receivers: dict[str, Any] = field(default_factory=_no_receivers)
    webhooks: dict[str, int] = field(default_factory=lambda: dict.fromkeys(WEBHOOK_OUTCOMES, 0))
    refund_scan: dict[str, Any] | None = None
    backfill: dict[str, Any] | None = None
    pruned: dict[str, int] = field(default_factory=dict)
    # The first SAMPLE_SIZE errors ({"ecommerce_id", "reason", "kind"}); error_count counts
    # them all, error_kinds counts them all by kind.
    errors: list[dict[str, str]] = field(default_factory=list)
    error_count: int = 0
    error_kinds: dict[str, int] = field(default_factory=dict)
    duration_seconds: float = 0.0
    exit_code: int = EXIT_OK
    # The first SAMPLE_SIZE changes (``on_change`` sees every one).
    changes: list[Change] = field(default_factory=list)
    unreachable: bool = False
    # ATH Móvil could not be reached, or failed for STOP_AFTER_FAILURES payments in a row.
    ath_down: bool = False
    sync_run_id: int | None = None
    # "SIGTERM", "SIGINT" (or a caller's reason) when the run was asked to stop before its end.
    stopped: str | None = None
    # The run's calls to ATH Móvil by endpoint, with their retries and failures by kind
    # (athm_sync.calls); recorded in SyncRun.calls, not in the --json document.
    api_calls: dict[str, Any] = field(default_factory=dict)
    # The one line the command ended with (exit 2, a lost connection...), for ``--json``.
    error: str | None = None
    _connect_failures: int = 0

    def add_error(self, ecommerce_id: Any, reason: str, kind: str, *, always: bool = False) -> None:
        """Count an error of ``kind`` (an :class:`ErrorKind`), and keep it when fewer than
        ``SAMPLE_SIZE`` are kept, or ``always`` (what ended the run)."""
        self.count_errors(kind, 1)
        if kind == ErrorKind.PAYMENT_NOT_CHECKED and "could not connect" in reason:
            self._connect_failures += 1
        if always or len(self.errors) < SAMPLE_SIZE:
            self.errors.append({"ecommerce_id": str(ecommerce_id), "reason": reason, "kind": kind})

    def count_errors(self, kind: str, count: int) -> None:
        """Count ``count`` errors of ``kind`` without listing them (they are past the sample)."""
        if count > 0:
            self.error_count += count
            self.error_kinds[kind] = self.error_kinds.get(kind, 0) + count

    def add_change(self, change: Change) -> None:
        """Count nothing (the transitions are counted apart); keep the first changes."""
        if len(self.changes) < SAMPLE_SIZE:
            self.changes.append(change)

    @property
    def only_connect_failures(self) -> bool:
        """Whether payments could not be checked and for every one ATH Móvil could not be
        reached."""
        failed = self.error_kinds.get(ErrorKind.PAYMENT_NOT_CHECKED, 0)
        return failed > 0 and self._connect_failures == failed

    @property
    def quiet(self) -> bool:
        """Whether nothing happened a person would want to read about: only checks that
        changed nothing (and old history pruned). The command prints nothing then."""
        return self.is_quiet()

    def is_quiet(self, *, unsettled_receivers: bool = True) -> bool:
        """:attr:`quiet`; with ``unsettled_receivers=False``, receivers still failing or given
        up since an earlier run (listed in every run's errors) do not count as news."""
        receivers = self.receivers
        scan = self.refund_scan or {}
        errors = self.error_count
        if not unsettled_receivers:
            errors -= self.error_kinds.get(ErrorKind.RECEIVER_FAILING, 0)
            errors -= self.error_kinds.get(ErrorKind.RECEIVER_GIVEN_UP, 0)
        return not (
            any(self.transitions.values())
            or self.captured
            or self.given_up
            or self.signals_sent
            or self.receiver_errors
            or self.redispatched
            or receivers["retried"]
            or (unsettled_receivers and receivers["failing"])
            or (unsettled_receivers and receivers["given_up_unacknowledged"])
            or self.webhooks["rejected"]
            or self.webhooks["pending"]
            or scan.get("refunds")
            or scan.get("linked")
            or scan.get("unmatched")
            or scan.get("unparsable")
            or errors > 0
            or (self.exit_code and (unsettled_receivers or self.exit_code != EXIT_ERRORS))
            or self.stopped
        )

    @property
    def errors_not_listed(self) -> int:
        return self.error_count - len(self.errors)

    def as_json(self) -> dict[str, Any]:
        return {
            "checked": self.checked,
            "unchanged": self.unchanged,
            "transitions": dict(self.transitions),
            "mismatched": self.transitions["mismatched"],
            "captured": self.captured,
            "given_up": self.given_up,
            "signals_sent": self.signals_sent,
            "receiver_errors": self.receiver_errors,
            "redispatched": self.redispatched,
            "receivers": dict(self.receivers),
            "webhooks": dict(self.webhooks),
            "refund_scan": self.refund_scan,
            "backfill": self.backfill,
            "pruned": dict(self.pruned),
            "errors": list(self.errors),
            "error_count": self.error_count,
            "error_kinds": dict(self.error_kinds),
            "duration_seconds": round(self.duration_seconds, 3),
            "dry_run": self.dry_run,
            "exit_code": self.exit_code,
            "stopped": self.stopped,
            "error": self.error,
        }


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
        closed += database.run_locked(
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


def new_run_id() -> str:
    """``host:pid:random``: who holds a claim, readable in the admin."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


class Runner:
    """One run. ``progress(done, total)`` and ``on_change(change)`` are optional callbacks."""

    def __init__(
        self,
        options: RunOptions,
        *,
        conf: AthmSyncSettings | None = None,
        client: ATHMovilClient | None = None,
        progress: Callable[[int, int], None] | None = None,
        on_change: Callable[[Change], None] | None = None,
        should_stop: StopRequest | Callable[[], bool] | None = None,
    ) -> None:
        self.options = options
        # Asked between payments: when it says so (SIGTERM, SIGINT), the run applies the
        # answer in hand, claims nothing more, releases its claims and ends (exit 128 + n).
        self._stop_request = should_stop if isinstance(should_stop, StopRequest) else None
        self._asked_to_stop: Callable[[], bool] = (
            should_stop.is_set if isinstance(should_stop, StopRequest) else should_stop
        ) or (lambda: False)
        # The database error that showed the connection is gone, once one did.
        self._lost: BaseException | None = None
        self._unreleased = ""  # why the claims could not be released, when they could not
        # Whether the database answered this run once: before that, an error means it cannot
        # be used at all (exit 2), not that a working connection was lost.
        self._db_worked = False
        self._failing = 0  # payments in a row ATH Móvil failed to answer
        self._gave_up_on_ath = False
        self.conf = conf or get_settings()
        self.workers = options.workers or self.conf.workers
        self.batch_size = max(10, self.workers * BATCH_PER_WORKER)
        if options.limit is not None:
            self.batch_size = min(self.batch_size, options.limit)
        self._client = client
        self._progress = progress
        self._on_change = on_change
        self.run_id = new_run_id()
        self.report = RunReport(dry_run=options.dry_run)
        self._done = 0
        self._total = 0
        # The client's counts when the run began: a --watch client serves several runs.
        self._calls: tuple[ATHMovilClient, dict[str, Any]] | None = None
        # Checks that changed nothing, not written yet (one query per batch).
        self._unchanged: list[bulk_checks.Settled] = []

    def _should_stop(self) -> bool:
        return self._gave_up_on_ath or self._asked_to_stop()

    # -- the run ---------------------------------------------------------------------------

    def run(self) -> RunReport:
        """Do the run; returns its report. Raises :class:`CannotRun` when the credentials are
        rejected (the report, with exit code 2, is then in ``self.report``)."""
        validate_options(self.options)
        started = time.monotonic()
        # Once a stop is asked for, a failed call to ATH Móvil is not retried.
        client = self._client or ATHMovilClient.from_settings(should_stop=self._asked_to_stop)
        self._calls = (client, client.calls.snapshot())
        sync_run = None
        failure: CannotRun | None = None
        ended = False
        try:
            if not self.options.dry_run:
                close_abandoned_runs(self.run_id)
                self._db_worked = True
                self._dispatch_leftovers()
                self._retry_receivers()
                # Retried like every write of a run: SQLite's one writer may be another run.
                sync_run = database.run_locked(
                    lambda: SyncRun.objects.create(
                        host=socket.gethostname(),
                        pid=os.getpid(),
                        options=self.options.as_dict(),
                        alive_until=clock.now() + claims.CLAIM_LEASE,
                    )
                )
                self.report.sync_run_id = sync_run.pk
            with ThreadPoolExecutor(
                max_workers=self.workers, thread_name_prefix="athm-sync"
            ) as pool:
                try:
                    if self.options.dry_run:
                        self._dry_run(pool, client)
                    else:
                        # Claims and the run's heartbeat, renewed while it lives.
                        with claims.LeaseKeeper(self.run_id, sync_run_id=sync_run.pk):
                            self._work(pool, client)
                except AuthenticationError as error:
                    failure = CannotRun(f"ATH Móvil rejected the credentials: {error}")
            ended = True
        except (DatabaseError, ConnectionLost) as error:
            stopped = database.interrupted_by(error, StopNow)
            if stopped is not None:
                # A second signal landed in a query: the connection is unusable, the stop is
                # what happened.
                database.discard()
                self._abort(sync_run, stopped, started)
                raise stopped from None
            if self._lost is None and not (
                self._db_worked
                and (isinstance(error, ConnectionLost) or database.connection_lost(error))
            ):
                self._abort(sync_run, error, started)
                raise
            self._lost = self._lost or error
        except BaseException as error:
            # Not an expected failure (a second signal, Ctrl-C without the handlers, a bug):
            # record it, then let it go.
            if isinstance(error, StopNow | KeyboardInterrupt):
                database.discard()  # it may have landed in a query, leaving it half-done
            self._abort(sync_run, error, started)
            raise
        finally:
            if sync_run is not None:  # nothing is claimed before the run is recorded
                self._release_claims(quietly=not ended)
            if self._client is None:
                client.close()
        if self._lost is not None:
            self._end_lost(sync_run, self._lost, started)
        report = self.report
        report.duration_seconds = time.monotonic() - started
        report.unreachable = report.checked == 0 and report.only_connect_failures
        report.ath_down = report.unreachable or self._gave_up_on_ath
        self._count_calls()
        if not self.options.dry_run:
            self._list_unsettled_receivers()
        if failure is not None:
            report.exit_code = EXIT_CANNOT_RUN
            report.add_error("", str(failure), ErrorKind.CREDENTIALS_REJECTED, always=True)
        elif self._asked_to_stop():
            report.stopped = self._stop_reason()
            report.exit_code = exit_code_for(report.stopped)
            if report.exit_code == EXIT_ERRORS:  # a caller's reason, not a signal: say it
                report.add_error(
                    "", f"stopped before its end: {report.stopped}", ErrorKind.STOPPED, always=True
                )
        elif report.error_count:
            # Exit 1 always has its reasons listed: a monitor never sees it with no errors.
            report.exit_code = EXIT_ERRORS
        if sync_run is not None:
            database.on_new_connection(lambda: self._finish(sync_run))
            self._prune()
        self._log_summary()
        if failure is not None:
            raise failure
        return report

    def _log_summary(self) -> None:
        """The run's summary in one log line: INFO when something happened, DEBUG for a run
        that only checked payments that did not change (so a log grows with events)."""
        report = self.report
        transitions = ", ".join(f"{kind} {n}" for kind, n in report.transitions.items() if n)
        kinds = ", ".join(f"{kind} {n}" for kind, n in sorted(report.error_kinds.items()))
        logger.log(
            logging.DEBUG if report.quiet else logging.INFO,
            "Run %s%s ended with exit %d: checked %d (unchanged %d), %s; signals sent %d, "
            "receiver errors %d; errors %d%s",
            self.run_id,
            " (dry run)" if report.dry_run else "",
            report.exit_code,
            report.checked,
            report.unchanged,
            f"transitions: {transitions}" if transitions else "no transitions",
            report.signals_sent,
            report.receiver_errors,
            report.error_count,
            f" ({kinds})" if kinds else "",
        )

    def _work(self, pool: ThreadPoolExecutor, client: ATHMovilClient) -> None:
        """What a run that writes does: a backfill, or the webhooks left pending, the refunds
        left half-sent, then the given or the due payments and the refund scan; each part only
        if no stop was asked."""
        if self.options.backfill:
            self._backfill(client)
            return
        self._process_webhooks(client)
        if self._should_stop():
            return
        self._settle_refunds(client)
        if self._should_stop():
            return
        if self.options.ecommerce_ids:
            self._check_given(pool, client)
            return
        self._check_due(pool, client)
        if not self._should_stop():
            self._scan_refunds(client)

    def _stop_reason(self) -> str:
        if self._stop_request is not None and self._stop_request.reason:
            return self._stop_request.reason
        return "requested"

    def _release_claims(self, *, quietly: bool) -> None:
        """Give back this run's claims, once more on a new connection if the old one died.
        ``quietly``: an error is on its way out; a failure here is said in one line instead of
        hiding it (the claims' lease frees them within ``CLAIM_LEASE``)."""
        try:
            database.on_new_connection(lambda: claims.release_claims(self.run_id))
        except DatabaseError as error:
            if not quietly:
                raise
            self._unreleased = database.first_line(error)
            if self._lost is not None:
                return  # the run's one line says it
            logger.warning(
                "Could not release the claims of run %s (%s); they are free again within %s",
                self.run_id,
                self._unreleased,
                claims.CLAIM_LEASE,
            )

    def _end_lost(self, sync_run: SyncRun | None, error: BaseException, started: float) -> None:
        """The database connection died: record the run's end on a new connection if the
        database allows, then raise :class:`ConnectionLost` with the one line to show."""
        report = self.report
        report.duration_seconds = time.monotonic() - started
        report.exit_code = EXIT_ERRORS
        if self._asked_to_stop():
            report.stopped = self._stop_reason()
        cause = database.first_line(error)
        message = f"the database connection was lost: {cause}"
        # Listed even when the sample is full: it is what ended the run.
        report.add_error("", message, ErrorKind.CONNECTION_LOST, always=True)
        parts = [
            message,
            f"the run stopped after {report.checked} payment(s); the others are left for the "
            "next run",
        ]
        if self._unreleased:
            parts.append(f"its claims are free again within {claims.CLAIM_LEASE}")
        if sync_run is not None:
            try:
                database.on_new_connection(lambda: self._finish(sync_run))
            except DatabaseError:
                parts.append("the next run records its end")
        raise ConnectionLost("; ".join(parts))

    def _prune(self) -> None:
        """Delete a bounded batch of old history (``HISTORY_RETENTION``); a failure is logged,
        never the end of a run that has done its work."""
        try:
            self.report.pruned = retention.prune(self.conf, clock.now())
        except DatabaseError as error:
            logger.warning("Could not prune old history: %s", database.first_line(error))

    def _dispatch_leftovers(self) -> None:
        """Send the signals an earlier run left unsent; a database that refuses is an error
        of this run (exit 1), not the end of it."""
        try:
            dispatched = sending.dispatch_pending(self._asked_to_stop)
        except DatabaseError as error:
            if database.connection_lost(error):
                raise
            self._record_error(
                "",
                f"signals left by an earlier run could not be read: {error}",
                ErrorKind.SIGNALS_UNSENT,
            )
            return
        report = self.report
        report.redispatched = dispatched.leftovers
        report.signals_sent += dispatched.sent
        report.receiver_errors += dispatched.receiver_errors
        if dispatched.connection_lost:
            raise ConnectionLost(dispatched.failures[-1][1])
        if dispatched.problem:
            self._record_error("", dispatched.problem, ErrorKind.SIGNALS_UNSENT)

    def _retry_receivers(self) -> None:
        """Call again the receivers that raised earlier and are due for a retry (a bounded
        batch, ``outbox.RETRY_BATCH``). Each that fails again counts as a receiver error;
        those still failing and those given up are listed at the end of the run."""
        try:
            attempts = outbox.retry_due(conf=self.conf)
        except DatabaseError as error:
            if database.connection_lost(error):
                raise
            self._record_error(
                "", f"failed receivers could not be retried: {error}", ErrorKind.DATABASE
            )
            return
        if attempts.connection_lost:
            raise ConnectionLost(attempts.problems[-1][1])
        report = self.report
        report.receivers.update(
            retried=len(attempts.done), delivered=attempts.delivered, given_up=attempts.given_up
        )
        report.receiver_errors += attempts.failed
        for pk, reason in attempts.problems:
            self._record_error(
                "", f"failed receiver {pk} could not be retried: {reason}", ErrorKind.DATABASE
            )

    def _list_unsettled_receivers(self) -> None:
        """List every receiver still failing, and every one given up that no person has
        acknowledged, in the errors (the first ``SAMPLE_SIZE``; the counts are exact): until
        it is delivered or acknowledged, no run looks clean."""
        try:
            rows = list(
                outbox.unsettled()
                .select_related("event")
                .order_by("first_failed_at", "pk")[:SAMPLE_SIZE]
            )
            failing = [row for row in rows if row.given_up_at is None]
            given_up = len(rows) - len(failing)
            if len(rows) < SAMPLE_SIZE:
                total_failing, total_given_up = len(failing), given_up
            else:
                total_failing = outbox.failing().count()
                total_given_up = outbox.given_up_unacknowledged().count()
        except DatabaseError as error:
            self._record_error(
                "", f"failed receivers could not be read: {error}", ErrorKind.DATABASE
            )
            return
        report = self.report
        report.receivers["failing"] = total_failing
        report.receivers["failing_since"] = (
            failing[0].first_failed_at.isoformat() if failing else None
        )
        report.receivers["given_up_unacknowledged"] = total_given_up
        for delivery in rows:
            kind = ErrorKind.RECEIVER_FAILING
            if delivery.given_up_at is not None:
                kind = ErrorKind.RECEIVER_GIVEN_UP
            self._record_error(delivery.event.payment_id, outbox.describe(delivery), kind)
        report.count_errors(ErrorKind.RECEIVER_FAILING, total_failing - len(failing))
        report.count_errors(ErrorKind.RECEIVER_GIVEN_UP, total_given_up - given_up)
        if report.receiver_errors and not rows:
            # They raised during this run and were delivered since (another process retried
            # them) or their record is gone: still, the shop's side was late.
            self._record_error(
                "",
                f"{report.receiver_errors} signal receiver call(s) raised during this run "
                "(rolled back alone) and are no longer recorded as failing",
                ErrorKind.RECEIVER_FAILING,
            )

    def _abort(self, sync_run: SyncRun | None, error: BaseException, started: float) -> None:
        report = self.report
        report.duration_seconds = time.monotonic() - started
        if isinstance(error, StopNow):
            report.stopped = error.reason
            report.exit_code = error.exit_code
        elif isinstance(error, KeyboardInterrupt):
            report.exit_code = 130
        else:
            report.exit_code = EXIT_CANNOT_RUN
        reason = f"run aborted: {type(error).__name__}: {error}".rstrip(": ")
        kind = ErrorKind.ABORTED
        if isinstance(error, StopNow | KeyboardInterrupt):
            kind = ErrorKind.STOPPED
        # Listed even when the sample is full: it is what ended the run.
        report.add_error("", reason[:1000], kind, always=True)
        if sync_run is None:
            return
        try:
            database.on_new_connection(lambda: self._finish(sync_run))
        except Exception as failure:  # the original error matters more
            if isinstance(failure, DatabaseError):
                logger.warning(
                    "Could not record the end of aborted run %s: %s; the next run records it",
                    self.run_id,
                    database.first_line(failure),
                )
            else:
                logger.exception("Could not record the end of aborted run %s", self.run_id)

    def _count_calls(self) -> None:
        """Put the calls the client made since the run began in the report."""
        if self._calls is not None:
            client, before = self._calls
            self.report.api_calls = client.calls.since(before)

    def _finish(self, sync_run: SyncRun) -> None:
        report = self.report
        self._count_calls()
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
        database.run_locked(
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

    # -- the webhooks left pending -------------------------------------------------------

    def _process_webhooks(self, client: ATHMovilClient) -> None:
        """Verify the webhook events the view could not (ATH Móvil was slow or down), before
        any payment is polled. Raises :class:`AuthenticationError` as polling would."""
        processed_events = inbox.process_pending(client, self.conf, self._asked_to_stop)
        for processed in processed_events:
            if processed.event.outcome != "pending":
                self.report.webhooks[processed.event.outcome] += 1
            if processed.result is not None:
                self._record_outcome(processed.result)
            if processed.credentials_error is not None:
                raise processed.credentials_error
        if any(processed.event.outcome == "pending" for processed in processed_events):
            self.report.webhooks["pending"] = inbox.count_pending()

    # -- refunds made elsewhere ---------------------------------------------------------

    def _settle_refunds(self, client: ATHMovilClient) -> None:
        """Settle the refunds a process left half-done (reserved, no answer recorded), by
        reading the refunded amount: the refund API is never called again."""
        for outcome in settle_intents(client, self.conf):
            self._record_outcome(outcome)

    def _scan_refunds(self, client: ATHMovilClient) -> None:
        """Read the transaction report for refunds made elsewhere, when the scan is due (at
        most once every ``REFUND_SCAN_INTERVAL`` across runs). Raises
        :class:`AuthenticationError` as polling would."""
        if self._gave_up_on_ath or self.report.only_connect_failures:
            return  # it would only wait out the same failure
        now = clock.now()
        if not transaction_report.claim_scan(now, self.conf):
            return
        try:
            scan = transaction_report.scan_refunds(client, self.conf, now)
        except AuthenticationError:
            raise
        except ATHMovilError as error:
            self._record_error(
                "", f"refund scan: the transaction report failed: {error}", ErrorKind.REPORT_FAILED
            )
            return
        self.report.refund_scan = scan.as_json()
        for outcome in scan.outcomes:
            self._record_outcome(outcome)

    # -- importing history ---------------------------------------------------------------

    def _backfill(self, client: ATHMovilClient) -> None:
        """``--from-date`` / ``--to-date``: import the transaction report over that range."""
        start, end = backfill_range(self.options, clock.now())
        self._total = len(list(transaction_report.chunks(start, end)))
        if self._progress is not None:
            self._progress(0, self._total)

        def counted(outcome: reconcile.Outcome) -> None:
            # Each payment the report named (or whose refunds it showed) is one checked, unless
            # it could not be stored (an error); one stored as the report has it already is one
            # unchanged.
            if not outcome.error:
                self.report.checked += 1
                self.report.unchanged += not (outcome.events or outcome.changed)
            self._record_outcome(outcome)

        try:
            result = transaction_report.backfill(
                client,
                self.conf,
                start,
                end,
                quiet=not self.options.signals,
                on_outcome=counted,
                progress=self._progress,
                should_stop=self._asked_to_stop,
            )
        except AuthenticationError:
            raise
        except ATHMovilError as error:
            self._record_error(
                "", f"backfill: the transaction report failed: {error}", ErrorKind.REPORT_FAILED
            )
            return
        self.report.backfill = result.as_json()
        for problem in result.unparsable:
            self._record_error(
                "",
                f"backfill: a report row was not imported: {problem}",
                ErrorKind.REPORT_ROW_SKIPPED,
            )

    # -- the three ways to pick payments -------------------------------------------------

    def _check_due(self, pool: ThreadPoolExecutor, client: ATHMovilClient) -> None:
        """Claim due payments batch by batch until none is left or the limit is reached.

        Due means due when the run started: a payment this run checked is rescheduled after
        that moment, so no payment is checked twice in one run, however long it lasts. The next
        batch is claimed while the current one is in flight (:meth:`_pipeline`); the checks
        that change nothing are written together (:meth:`_settle_claimed`).
        """
        now = clock.now()
        if self._progress is not None:
            due = Payment.objects.due(now).count()
            self._total = min(due, self.options.limit) if self.options.limit else due
            self._progress(0, self._total)

        def claimed_batches() -> Iterator[list[Work]]:
            claimed_total = 0
            while True:
                size = self.batch_size
                if self.options.limit is not None:
                    size = min(size, self.options.limit - claimed_total)
                if size <= 0:
                    return
                # The lease counts from the claim, not from the start of the run.
                claimed = claims.claim_due(
                    self.run_id, size, claims.CLAIM_LEASE + (clock.now() - now), now=now
                )
                if not claimed:
                    return
                claimed_total += len(claimed)
                self._total = max(self._total, claimed_total)
                yield [(payment, self.conf.auto_capture) for payment in claimed]

        try:
            self._pipeline(pool, client, claimed_batches(), self._settle_claimed)
        finally:
            self._write_unchanged()

    def _check_given(self, pool: ThreadPoolExecutor, client: ATHMovilClient) -> None:
        """``--ecommerce-id``: exactly those payments, whatever their status."""
        ids = list(self.options.ecommerce_ids)
        if self.options.limit is not None:
            ids = ids[: self.options.limit]
        self._total = len(ids)
        if self._progress is not None:
            self._progress(0, self._total)

        batches = (
            [(row, self.conf.auto_capture and not row.is_terminal) for row in page]
            for page in self._given_pages(ids)
        )

        def settle(payment: Payment, observation: reconcile.Observation) -> None:
            self._apply(observation, source="manual")

        self._pipeline(pool, client, batches, settle)

    def _given_pages(self, ids: Sequence[uuid.UUID]) -> Iterator[list[Payment]]:
        """The stored rows of ``ids``, a batch at a time, in the order given (a payment
        deleted since the options were checked is left out)."""
        for start in range(0, len(ids), self.batch_size):
            chunk = ids[start : start + self.batch_size]
            stored = Payment.objects.in_bulk(chunk)
            yield [stored[pk] for pk in chunk if pk in stored]

    def _pipeline(
        self,
        pool: ThreadPoolExecutor,
        client: ATHMovilClient,
        batches: Iterator[Sequence[Work]],
        settle: Callable[[Payment, reconcile.Observation], None],
    ) -> None:
        """Ask ATH Móvil about each payment of ``batches`` in the pool and ``settle`` each
        answer as it comes, in this thread.

        The workers never wait for the database: as soon as no more than one batch is in
        flight the next one is taken (claimed) ahead, so a worker that finishes always finds
        the next payment queued. At most two batches are held at once, however many are due.
        """
        in_flight: dict[Future, Payment] = {}
        exhausted = False

        def top_up() -> None:
            nonlocal exhausted
            while not exhausted and len(in_flight) <= self.batch_size and not self._should_stop():
                batch = next(batches, None)
                if batch is None:
                    exhausted = True
                    return
                for payment, capture in batch:
                    future = pool.submit(
                        reconcile.observe,
                        client,
                        payment.pk,
                        payment.auth_token,
                        capture=capture,
                        expected=payment,
                    )
                    in_flight[future] = payment

        try:
            top_up()
            while in_flight:
                finished, _ = wait(in_flight, return_when=FIRST_COMPLETED)
                for future in finished:
                    payment = in_flight.pop(future)
                    settle(payment, future.result())  # AuthenticationError propagates
                    self._tick()
                    if self._should_stop():
                        # Answers not settled yet are dropped: their payments stay due.
                        return
                    top_up()
        finally:
            for future in in_flight:
                future.cancel()

    def _settle_claimed(self, payment: Payment, observation: reconcile.Observation) -> None:
        """A claimed payment's answer: kept for one bulk write when it changes nothing but the
        schedule, otherwise applied at once in a transaction of its own."""
        checked = bulk_checks.settle_unchanged(
            payment, observation, now=clock.now(), conf=self.conf
        )
        if checked is None:
            self._apply(observation, source="poll")
            return
        self._answered()
        self._unchanged.append(checked)
        if len(self._unchanged) >= self.batch_size:
            self._write_unchanged()

    def _write_unchanged(self) -> None:
        """Write the unchanged checks held so far (one query). If the database refuses, the
        payments keep their schedule and are due again once the run releases its claims."""
        held, self._unchanged = self._unchanged, []
        if not held:
            return
        if self._lost is not None:
            return  # they stay due: the run's claims are released on a new connection
        try:
            taken = bulk_checks.record_unchanged(self.run_id, held)
        except DatabaseError as error:
            if database.connection_lost(error):
                self._lost = error
                raise
            self._record_error(
                "",
                f"{len(held)} unchanged check(s) could not be stored: {error}",
                ErrorKind.DATABASE,
            )
            return
        # The others were deleted, or checked meanwhile by another door, whose outcome stands.
        self.report.checked += taken
        self.report.unchanged += taken

    def _apply(self, observation: reconcile.Observation, *, source: str) -> None:
        try:
            outcome = reconcile.apply(observation, source=source, conf=self.conf)
        except Payment.DoesNotExist:
            logger.warning("Payment %s was deleted during the run", observation.ecommerce_id)
        except DatabaseError as error:
            if database.connection_lost(error):  # apply lets only that through
                self._lost = error
            raise
        else:
            self._count(observation, outcome)

    def _count(self, observation: reconcile.Observation, outcome: reconcile.Outcome) -> None:
        report = self.report
        if outcome.given_up:
            report.given_up += 1
        if outcome.error:
            self._record_error(
                observation.ecommerce_id, outcome.error, ErrorKind.PAYMENT_NOT_CHECKED
            )
            if isinstance(observation.error, TransientError):
                self._ath_failed(observation.error)
            return
        self._answered()
        report.checked += 1
        if observation.captured:
            report.captured += 1
        if not outcome.events:
            report.unchanged += 1
        self._record_events(outcome)

    def _answered(self) -> None:
        """ATH Móvil answered for one payment: a run of failures, if any, is over."""
        if self._failing:
            logger.warning("ATH Móvil answers again, after %d failed payment(s)", self._failing)
            self._failing = 0

    def _ath_failed(self, error: TransientError) -> None:
        """One more payment ATH Móvil failed to answer: said once, and the run stops early
        after ``STOP_AFTER_FAILURES`` in a row."""
        self._failing += 1
        if self._failing == 1:
            logger.warning("ATH Móvil is failing: %s", error)
        if self._failing == STOP_AFTER_FAILURES and not self._gave_up_on_ath:
            self._gave_up_on_ath = True
            message = (
                f"ATH Móvil failed for {self._failing} payments in a row; the run stops early "
                "and leaves the other due payments for the next run"
            )
            logger.error(message)
            self._record_error("", message, ErrorKind.ATH_MOVIL_DOWN)

    def _record_outcome(self, outcome: reconcile.Outcome) -> None:
        """Count what ``apply`` did for a payment a webhook or the report (not the poll) led to."""
        if outcome.error:
            self._record_error(outcome.payment.pk, outcome.error, ErrorKind.PAYMENT_NOT_CHECKED)
        self._record_events(outcome)

    def _record_error(self, ecommerce_id: Any, reason: str, kind: str) -> None:
        self.report.add_error(ecommerce_id, reason, kind)

    def _record_events(self, outcome: reconcile.Outcome) -> None:
        """Count the transitions ``apply`` recorded and the signals it sent."""
        report = self.report
        report.signals_sent += outcome.signals_sent
        report.receiver_errors += outcome.receiver_errors
        if outcome.connection_lost:
            # The transition is stored; its signal stays pending for the next run.
            self._count_transitions(outcome)
            raise ConnectionLost(outcome.unsent)
        if outcome.unsent:
            self._record_error(outcome.payment.pk, outcome.unsent, ErrorKind.SIGNALS_UNSENT)
        self._count_transitions(outcome)

    def _count_transitions(self, outcome: reconcile.Outcome) -> None:
        report = self.report
        payment = outcome.payment
        for event in outcome.events:
            kind = str(event.kind)
            report.transitions[kind] += 1
            amount = event.refund.amount if event.refund is not None else payment.total
            self._changed(Change(payment.pk, kind, payment.status, amount, payment.metadata_1))

    def _dry_run(self, pool: ThreadPoolExecutor, client: ATHMovilClient) -> None:
        """Ask ATH Móvil (never capturing) and decide, writing nothing."""
        now = clock.now()
        if self.options.ecommerce_ids:
            ids = list(self.options.ecommerce_ids)
            if self.options.limit is not None:
                ids = ids[: self.options.limit]
            self._total = len(ids)
            pages = self._given_pages(ids)
        else:
            if self._progress is not None:
                due = Payment.objects.due(now).count()
                self._total = min(due, self.options.limit) if self.options.limit else due
            pages = self._due_pages(now)
        if self._progress is not None:
            self._progress(0, self._total)

        def settle(payment: Payment, observation: reconcile.Observation) -> None:
            self._count_decision(payment, observation, now)

        batches = ([(payment, False) for payment in page] for page in pages)
        self._pipeline(pool, client, batches, settle)

    def _due_pages(self, now: datetime) -> Iterator[list[Payment]]:
        """The payments due at ``now``, a batch at a time (keyset pages: nothing is claimed,
        and none is read twice), up to ``--limit``."""
        due = Payment.objects.due(now)
        remaining = self.options.limit
        last: Payment | None = None
        while remaining is None or remaining > 0:
            page = due
            if last is not None:
                page = due.filter(
                    Q(next_check_at__gt=last.next_check_at)
                    | Q(next_check_at=last.next_check_at, pk__gt=last.pk)
                )
            size = self.batch_size if remaining is None else min(self.batch_size, remaining)
            rows = list(page[:size])
            if not rows:
                return
            yield rows
            last = rows[-1]
            if remaining is not None:
                remaining -= len(rows)

    def _count_decision(
        self, payment: Payment, observation: reconcile.Observation, now: datetime
    ) -> None:
        report = self.report
        if observation.error is not None:
            self._record_error(payment.pk, str(observation.error), ErrorKind.PAYMENT_NOT_CHECKED)
            return
        report.checked += 1
        snapshot = observation.snapshot
        if self._would_capture(payment, snapshot, now):
            # The real run would capture it, and ATH Móvil would answer COMPLETED.
            report.captured += 1
            snapshot = dataclasses.replace(snapshot, status=Payment.Status.COMPLETED)
        decision = reconcile.decide(payment, snapshot, now=now, conf=self.conf)
        kinds = []
        if decision.event:
            kinds.append(str(decision.event))
        if decision.refund_amount > 0:
            kinds.append(PaymentEvent.Kind.REFUND_SENT.value)
        if not kinds:
            report.unchanged += 1
            if (
                decision.status not in Payment.TERMINAL_STATUSES
                and now >= payment.created_at + self.conf.max_age
            ):
                report.given_up += 1
            return
        for kind in kinds:
            report.transitions[kind] += 1
            amount = decision.refund_amount if kind == "refund_sent" else payment.total
            self._changed(Change(payment.pk, kind, decision.status, amount, payment.metadata_1))

    def _would_capture(self, payment: Payment, snapshot: Any, now: datetime) -> bool:
        return bool(
            snapshot is not None
            and snapshot.status == Payment.Status.CONFIRM
            and self.conf.auto_capture
            and not payment.is_terminal
            and payment.auth_token
            and not reconcile.mismatch(payment, snapshot)
            and reconcile.auth_token_usable(payment.auth_token, now)
        )

    # -- callbacks -------------------------------------------------------------------------

    def _changed(self, change: Change) -> None:
        self.report.add_change(change)
        if self._on_change is not None:
            self._on_change(change)

    def _tick(self) -> None:
        self._done += 1
        if self._progress is not None:
            self._progress(self._done, max(self._total, self._done))


__all__ = [
    "EXIT_ABANDONED",
    "EXIT_CANNOT_RUN",
    "EXIT_ERRORS",
    "EXIT_OK",
    "CannotRun",
    "Change",
    "ConnectionLost",
    "ErrorKind",
    "RunOptions",
    "RunReport",
    "Runner",
    "close_abandoned_runs",
    "parse_ecommerce_ids",
    "validate_options",
]
