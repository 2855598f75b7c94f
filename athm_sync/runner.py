"""One run of ``manage.py athm_sync``: the orchestrator over the modules that do the work.

The command parses options and prints; this module runs them, so a run can be called from
other code (a ``--watch`` loop, a Celery task) and tested without parsing argv. A run records
itself (:mod:`~athm_sync.sync_runs`), sends leftover signals (:mod:`~athm_sync.sending`),
retries receivers (:mod:`~athm_sync.outbox`), verifies pending webhooks, claims due payments
(:mod:`~athm_sync.claims`), asks ATH Móvil in batches (:mod:`~athm_sync.batching`), applies
each answer or writes the unchanged ones together (:mod:`~athm_sync.bulk_checks`), and counts
it all (:mod:`~athm_sync.run_report`). Options: :mod:`~athm_sync.run_options`.

Threads: only :func:`athm_sync.reconcile.observe` (network, no database) runs in the worker
pool. Claims, :func:`~athm_sync.reconcile.apply` and every other query run in the calling
thread, so a run uses one database connection however many workers it has.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from typing import Any

from django.db import DatabaseError

from athm_sync import (
    batching,
    bulk_checks,
    claims,
    clock,
    database,
    dry_run,
    inbox,
    outbox,
    reconcile,
    retention,
    run_report,
    sending,
    sync_runs,
)
from athm_sync import report as transaction_report
from athm_sync.client import ATHMovilClient, ATHMovilError, AuthenticationError, TransientError
from athm_sync.conf import AthmSyncSettings, get_settings
from athm_sync.database import ConnectionLost
from athm_sync.models import Payment, SyncRun
from athm_sync.refunds import settle_intents
from athm_sync.run_options import (
    CannotRun,
    RunOptions,
    backfill_range,
    parse_date,
    parse_ecommerce_ids,
    validate_options,
)
from athm_sync.run_report import (
    EXIT_ABANDONED,
    EXIT_CANNOT_RUN,
    EXIT_ERRORS,
    EXIT_OK,
    SAMPLE_SIZE,
    TRANSITION_KINDS,
    Change,
    ErrorKind,
    RunReport,
)
from athm_sync.stopping import StopNow, StopRequest, exit_code_for
from athm_sync.sync_runs import close_abandoned_runs, new_run_id

logger = logging.getLogger("athm_sync.runner")

# After this many payments in a row that ATH Móvil failed to answer (connection failures,
# timeouts, 5xx), the run stops early: the others would only wait out the same retries.
STOP_AFTER_FAILURES = 5


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
        self.batch_size = batching.batch_size(self.workers, options.limit)
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
                sync_run = sync_runs.start(self.options)
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
            run_report.list_unsettled_receivers(report)
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
        run_report.log_summary(report, self.run_id)
        if failure is not None:
            raise failure
        return report

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

    def _abort(self, sync_run: SyncRun | None, error: BaseException, started: float) -> None:
        self.report.duration_seconds = time.monotonic() - started
        self.report.record_abort(error)
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
        self._count_calls()
        sync_runs.record_end(sync_run, self.report)

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
        self._count_due(now)
        if self._progress is not None:
            self._progress(0, self._total)

        def counted(claimed: int) -> None:
            self._total = max(self._total, claimed)

        batches = batching.claimed_batches(
            self.run_id,
            now=now,
            size=self.batch_size,
            limit=self.options.limit,
            capture=self.conf.auto_capture,
            counted=counted,
        )
        try:
            self._pipeline(pool, client, batches, self._settle_claimed)
        finally:
            self._write_unchanged()

    def _check_given(self, pool: ThreadPoolExecutor, client: ATHMovilClient) -> None:
        """``--ecommerce-id``: exactly those payments, whatever their status."""
        ids = self._given_ids()
        if self._progress is not None:
            self._progress(0, self._total)

        batches = (
            [(row, self.conf.auto_capture and not row.is_terminal) for row in page]
            for page in batching.given_pages(ids, self.batch_size)
        )

        def settle(payment: Payment, observation: reconcile.Observation) -> None:
            self._apply(observation, source="manual")

        self._pipeline(pool, client, batches, settle)

    def _pipeline(
        self,
        pool: ThreadPoolExecutor,
        client: ATHMovilClient,
        batches: Iterator[Sequence[batching.Work]],
        settle: Callable[[Payment, reconcile.Observation], None],
    ) -> None:
        """:func:`athm_sync.batching.pipeline` for this run: its batch size, its stop, its
        progress."""
        batching.pipeline(
            pool,
            client,
            batches,
            settle,
            size=self.batch_size,
            should_stop=self._should_stop,
            tick=self._tick,
        )

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
        self.report.count_transitions(outcome, self._changed)

    def _dry_run(self, pool: ThreadPoolExecutor, client: ATHMovilClient) -> None:
        """Ask ATH Móvil (never capturing) and decide, writing nothing."""
        now = clock.now()
        if self.options.ecommerce_ids:
            pages = batching.given_pages(self._given_ids(), self.batch_size)
        else:
            self._count_due(now)
            pages = batching.due_pages(now, self.batch_size, self.options.limit)
        if self._progress is not None:
            self._progress(0, self._total)

        def settle(payment: Payment, observation: reconcile.Observation) -> None:
            dry_run.count_decision(
                self.report, payment, observation, now=now, conf=self.conf, changed=self._changed
            )

        batches = ([(payment, False) for payment in page] for page in pages)
        self._pipeline(pool, client, batches, settle)

    def _given_ids(self) -> list[Any]:
        """``--ecommerce-id``'s payments up to ``--limit``: the run's total."""
        ids = list(self.options.ecommerce_ids)[: self.options.limit]
        self._total = len(ids)
        return ids

    def _count_due(self, now: datetime) -> None:
        """The payments due at ``now`` up to ``--limit`` are the total that progress shows."""
        if self._progress is not None:
            due = Payment.objects.due(now).count()
            self._total = min(due, self.options.limit) if self.options.limit else due

    # -- callbacks -------------------------------------------------------------------------

    def _changed(self, change: Change) -> None:
        self.report.add_change(change)
        if self._on_change is not None:
            self._on_change(change)

    def _tick(self) -> None:
        self._done += 1
        if self._progress is not None:
            self._progress(self._done, max(self._total, self._done))


# Re-exported: the names the command, --watch, the task queues and shops import from here, as
# they did before the report, the options and the SyncRun rows got modules of their own.
__all__ = [
    "EXIT_ABANDONED",
    "EXIT_CANNOT_RUN",
    "EXIT_ERRORS",
    "EXIT_OK",
    "SAMPLE_SIZE",
    "TRANSITION_KINDS",
    "CannotRun",
    "Change",
    "ConnectionLost",
    "ErrorKind",
    "RunOptions",
    "RunReport",
    "Runner",
    "backfill_range",
    "close_abandoned_runs",
    "new_run_id",
    "parse_date",
    "parse_ecommerce_ids",
    "validate_options",
]
