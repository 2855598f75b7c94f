"""What one run reports: its counts, its errors by kind, its changes, its summary line.

:class:`RunReport` is filled in by :class:`athm_sync.runner.Runner` as the run goes;
:meth:`RunReport.as_json` is the documented ``--json`` document, and the command prints it
(:mod:`athm_sync.management.commands.athm_sync`). The exit codes and the kinds of errors
(:class:`ErrorKind`) are listed in docs/operations.md.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from django.db import DatabaseError

from athm_sync import outbox
from athm_sync.reconcile import Outcome
from athm_sync.stopping import StopNow

# The name the summary line was always logged under (docs/operations.md).
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
# A run's report keeps counts of everything but only the first this many changes and errors,
# so that its memory does not grow with the number of payments (the counts stay exact).
SAMPLE_SIZE = 100
EXIT_OK, EXIT_ERRORS, EXIT_CANNOT_RUN = 0, 1, 2
# The exit code a later run gives a SyncRun that never recorded its end (killed, its
# database connection gone for good) once its heartbeat (``alive_until``) has run out.
EXIT_ABANDONED = -1
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

    def record_abort(self, error: BaseException) -> None:
        """Record what aborted the run: a stop (its exit code), Ctrl-C (130), or an error no
        one expected (exit 2); listed even when the sample is full: it is what ended the run."""
        if isinstance(error, StopNow):
            self.stopped = error.reason
            self.exit_code = error.exit_code
        elif isinstance(error, KeyboardInterrupt):
            self.exit_code = 130
        else:
            self.exit_code = EXIT_CANNOT_RUN
        reason = f"run aborted: {type(error).__name__}: {error}".rstrip(": ")
        kind = ErrorKind.ABORTED
        if isinstance(error, StopNow | KeyboardInterrupt):
            kind = ErrorKind.STOPPED
        self.add_error("", reason[:1000], kind, always=True)

    def count_transitions(self, outcome: Outcome, changed: Callable[[Change], None]) -> None:
        """Count the transitions ``apply`` recorded in ``outcome``, passing each to ``changed``."""
        payment = outcome.payment
        for event in outcome.events:
            kind = str(event.kind)
            self.transitions[kind] += 1
            amount = event.refund.amount if event.refund is not None else payment.total
            changed(Change(payment.pk, kind, payment.status, amount, payment.metadata_1))

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


def log_summary(report: RunReport, run_id: str) -> None:
    """The run's summary in one log line: INFO when something happened, DEBUG for a run
    that only checked payments that did not change (so a log grows with events)."""
    transitions = ", ".join(f"{kind} {n}" for kind, n in report.transitions.items() if n)
    kinds = ", ".join(f"{kind} {n}" for kind, n in sorted(report.error_kinds.items()))
    logger.log(
        logging.DEBUG if report.quiet else logging.INFO,
        "Run %s%s ended with exit %d: checked %d (unchanged %d), %s; signals sent %d, "
        "receiver errors %d; errors %d%s",
        run_id,
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


def list_unsettled_receivers(report: RunReport) -> None:
    """List every receiver still failing, and every one given up that no person has
    acknowledged, in ``report``'s errors (the first ``SAMPLE_SIZE``; the counts are exact):
    until it is delivered or acknowledged, no run looks clean."""
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
        report.add_error("", f"failed receivers could not be read: {error}", ErrorKind.DATABASE)
        return
    report.receivers["failing"] = total_failing
    report.receivers["failing_since"] = failing[0].first_failed_at.isoformat() if failing else None
    report.receivers["given_up_unacknowledged"] = total_given_up
    for delivery in rows:
        kind = ErrorKind.RECEIVER_FAILING
        if delivery.given_up_at is not None:
            kind = ErrorKind.RECEIVER_GIVEN_UP
        report.add_error(delivery.event.payment_id, outbox.describe(delivery), kind)
    report.count_errors(ErrorKind.RECEIVER_FAILING, total_failing - len(failing))
    report.count_errors(ErrorKind.RECEIVER_GIVEN_UP, total_given_up - given_up)
    if report.receiver_errors and not rows:
        # They raised during this run and were delivered since (another process retried
        # them) or their record is gone: still, the shop's side was late.
        report.add_error(
            "",
            f"{report.receiver_errors} signal receiver call(s) raised during this run "
            "(rolled back alone) and are no longer recorded as failing",
            ErrorKind.RECEIVER_FAILING,
        )
