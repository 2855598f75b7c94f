"""``manage.py athm_sync``: check every due payment with ATH Móvil and apply what changed.

Exit status: 0 when every due payment was checked and nothing is wrong, 1 when something is
(each cause listed in the summary's ``errors`` with its ``kind``: payments not checked after
retries, a signal receiver failing or given up and not acknowledged, a report that failed,
signals that could not be sent, the database connection lost mid-run), 2 when the run cannot
happen (bad settings or options, credentials rejected, a database it cannot use); 143
(SIGTERM) or 130 (SIGINT) when a signal stopped it (:mod:`athm_sync.stopping`). Expected
failures print one line on stderr, never a traceback; with ``--json`` stdout always holds
one JSON document (``{"exit_code": 2, "error": "..."}`` when nothing ran).

A run with nothing to say (only checks that changed nothing) prints nothing, or one line when
stdout is a terminal, so a cron log grows with events, not with minutes; ``--json``, the
``SyncRun`` row and the log (``athm_sync.runner``) keep its whole summary.

The work is done by :class:`athm_sync.runner.Runner`; this module parses and prints.
"""

from __future__ import annotations

import json
import sys
from typing import Any, NoReturn

from django.core.exceptions import ImproperlyConfigured
from django.core.management.base import CommandParser

from athm_sync import outbox
from athm_sync.conf import get_settings, unknown_keys
from athm_sync.health import check_health, parse_duration
from athm_sync.management.base import OneLineErrorCommand
from athm_sync.runner import (
    EXIT_CANNOT_RUN,
    EXIT_ERRORS,
    CannotRun,
    Change,
    ConnectionLost,
    Runner,
    RunOptions,
    RunReport,
    parse_date,
    parse_ecommerce_ids,
)
from athm_sync.stopping import StopNow, StopRequest, signals_stop
from athm_sync.watch import DEFAULT_INTERVAL, watch

PROGRAM = "athm_sync"
BAR_WIDTH = 30
_LABELS = {
    "completed": "COMPLETED",
    "cancelled": "CANCELLED",
    "expired": "EXPIRED",
    "refund_sent": "REFUNDED",
    "mismatched": "HELD",
}


def _plain(text: str) -> str:
    return text


class Command(OneLineErrorCommand):
    program = PROGRAM
    help = (
        "Ask ATH Móvil about every payment that can still change, apply each transition once "
        "and send its signal. Exit 0: all checked; 1: something is wrong, each cause listed "
        "(payments not checked, a signal receiver failing or given up, a report that failed, "
        "signals not sent); 2: cannot run; 143/130: stopped by SIGTERM/SIGINT."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--dry-run",
            action="store_true",
            help="Ask ATH Móvil and report what would change; write nothing, send no signal.",
        )
        parser.add_argument(
            "--ecommerce-id",
            action="append",
            default=[],
            metavar="ID",
            dest="ecommerce_id",
            help="Check this stored payment (any status) instead of the due ones. Repeatable.",
        )
        parser.add_argument(
            "--limit", type=int, metavar="N", help="Check at most N payments in this run."
        )
        parser.add_argument(
            "--workers",
            type=int,
            metavar="N",
            help="Concurrent calls to ATH Móvil (default: ATHM_SYNC['WORKERS']).",
        )
        parser.add_argument(
            "--json",
            action="store_true",
            help="Print one JSON document on stdout and nothing else there, whatever the exit "
            "code (with --watch: one per pass).",
        )
        parser.add_argument(
            "--from-date",
            metavar="YYYY-MM-DD",
            help="Backfill: import the transaction report from this day (Puerto Rico time).",
        )
        parser.add_argument(
            "--to-date", metavar="YYYY-MM-DD", help="Backfill: up to this day, included."
        )
        parser.add_argument(
            "--no-signals",
            action="store_false",
            dest="signals",
            help="Backfill: record history without sending its signals.",
        )
        parser.add_argument(
            "--watch",
            action="store_true",
            help="Run pass after pass until SIGTERM or SIGINT (containers, supervisors).",
        )
        parser.add_argument(
            "--interval",
            type=float,
            metavar="SECONDS",
            help="With --watch: seconds between passes (default 5).",
        )
        parser.add_argument(
            "--iterations",
            type=int,
            metavar="N",
            help="With --watch: stop after N passes.",
        )
        parser.add_argument(
            "--health",
            action="store_true",
            help="Check nothing, read only the database: exit 0 if a run succeeded within "
            "--max-age and nothing is failing, else 1.",
        )
        parser.add_argument(
            "--max-age",
            metavar="DURATION",
            help="With --health: how recent the last successful run must be (default 10m).",
        )
        parser.add_argument(
            "--redeliver",
            nargs="+",
            metavar="ID",
            help="Check nothing: call these failed signal receivers again now (ids from the "
            "admin or the run's errors), or 'all' of them; exit 1 if one fails again.",
        )
        parser.add_argument(
            "--acknowledge",
            nargs="+",
            metavar="ID",
            help="Check nothing: mark these given-up signal receivers (or 'all' of them) as "
            "settled by hand, so that runs stop listing them and --health stops counting them.",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        self._json = self.json_output = bool(options["json"])
        self._verbosity = int(options["verbosity"])
        self._bar_shown = False
        self._dry_run = bool(options["dry_run"])
        # A person asked about these payments or days: the summary is printed even if quiet.
        self._asked = bool(
            options["dry_run"] or options["ecommerce_id"] or options["from_date"] is not None
        )
        self._unsettled_receivers: tuple[int, int] = (0, 0)
        if options["acknowledge"] is not None:
            self._acknowledge(options)
        if options["redeliver"] is not None:
            self._alone("--redeliver", options)
        if options["health"] or options["max_age"] is not None:
            self._health(options)  # before the settings: it reads only the database
        try:
            conf = get_settings()
        except ImproperlyConfigured as error:
            self._fail(f"bad ATHM_SYNC setting: {error}")
        if options["redeliver"] is not None:
            self._redeliver(options, conf)
        unknown = unknown_keys()
        if unknown:
            self.stderr.write(
                f"{PROGRAM}: warning: ATHM_SYNC has unknown keys, ignored: {', '.join(unknown)} "
                "(a typo?)"
            )
        try:
            run_options = RunOptions(
                dry_run=options["dry_run"],
                ecommerce_ids=parse_ecommerce_ids(options["ecommerce_id"] or ()),
                limit=options["limit"],
                workers=options["workers"],
                from_date=parse_date("--from-date", options["from_date"]),
                to_date=parse_date("--to-date", options["to_date"]),
                signals=options["signals"],
            )
        except CannotRun as error:
            self._fail(str(error))
        self._options = run_options
        if options["watch"] or options["interval"] is not None or options["iterations"]:
            self._watch(run_options, conf, options)
        stop = StopRequest()
        runner = Runner(
            run_options,
            conf=conf,
            progress=self._progress if self._show_progress() else None,
            on_change=self._change_printer(),
            should_stop=stop,
        )
        try:
            with signals_stop(stop):
                report = runner.run()
        except CannotRun as error:
            if runner.report.exit_code != EXIT_CANNOT_RUN:  # refused before anything ran
                self._fail(str(error))
            self._fail_with_report(runner.report, str(error))
        except ConnectionLost as error:
            self._fail_with_report(runner.report, str(error))
        except StopNow as stopped:
            message = f"{stopped}; its claims were released"
            self._fail_with_report(runner.report, message, stopped.exit_code)
        self._end_progress()
        self._print_report(report)
        if report.stopped:
            self.stderr.write(
                f"{PROGRAM}: stopped by {report.stopped} after {report.checked} payment(s); "
                "the others are left for the next run"
            )
        if report.unreachable:
            self.stderr.write(
                f"{PROGRAM}: error: ATH Móvil is unreachable at {conf.api_base_url} "
                f"(could not connect for any of {report.error_count} payment(s))"
            )
        if report.exit_code:
            sys.exit(report.exit_code)

    def _watch(self, run_options: RunOptions, conf: Any, options: dict[str, Any]) -> NoReturn:
        """``--watch``: passes until SIGTERM/SIGINT; exit 0 when stopped or done, 2 (one
        line) when it cannot run: credentials rejected, a database it cannot use."""
        interval = options["interval"]
        problem = ""
        if not options["watch"]:
            problem = "--interval and --iterations only go with --watch"
        elif interval is not None and not 0 <= interval <= 3600:
            problem = f"--interval must be from 0 to 3600 seconds, not {interval:g}"
        elif options["iterations"] is not None and options["iterations"] < 1:
            problem = f"--iterations must be at least 1, not {options['iterations']}"
        elif run_options.dry_run or run_options.backfill or run_options.ecommerce_ids:
            problem = "--watch does not go with --dry-run, --ecommerce-id or a backfill"
        if problem:
            self._fail(problem)
        stop = StopRequest()
        try:
            with signals_stop(stop):
                result = watch(
                    run_options,
                    conf,
                    stop,
                    interval=DEFAULT_INTERVAL if interval is None else interval,
                    iterations=options["iterations"],
                    on_report=self._print_pass,
                    on_change=self._change_printer(),
                )
        except CannotRun as error:
            self._fail(str(error))
        except StopNow as stopped:
            self._fail(f"--watch {stopped}; its claims were released", stopped.exit_code)
        if not self._json and self._verbosity >= 1:
            ended = "stopped" if stop.is_set() else "done"
            self.stdout.write(f"{PROGRAM}: --watch {ended} after {result.passes} pass(es)")
        sys.exit(0)

    def _print_pass(self, report: RunReport) -> None:
        """One pass of --watch: its JSON line, or its summary when it did or met something.
        Receivers still failing (or given up) are listed in every pass's errors: they are news
        only when their numbers change."""
        if self._json:
            self.stdout.write(json.dumps(report.as_json()))
            self.stdout.flush()
            return
        receivers = report.receivers
        unsettled = (receivers["failing"], receivers["given_up_unacknowledged"])
        changed, self._unsettled_receivers = unsettled != self._unsettled_receivers, unsettled
        if changed or self._verbosity >= 2 or not report.is_quiet(unsettled_receivers=False):
            self._print_report(report, always=True)

    def _health(self, options: dict[str, Any]) -> NoReturn:
        """``--health``: one line (or the JSON document), exit 0 when healthy, 1 when not.
        Only the database is read: no settings, no tokens, no ATH Móvil."""
        if not options["health"]:
            self._fail("--max-age only goes with --health")
        try:
            given = options["max_age"]
            max_age = parse_duration("10m" if given is None else given)
        except ValueError as error:
            self._fail(f"--max-age {error}")
        health = check_health(max_age)
        if self._json:
            self.stdout.write(json.dumps(health.as_json()))
        else:
            state = "healthy" if health.healthy else "unhealthy"
            write = self.stdout.write if health.healthy else self.stderr.write
            write(f"{PROGRAM}: {state}: {health.reason}")
        sys.exit(health.exit_code)

    def _alone(self, option: str, options: dict[str, Any]) -> None:
        """Refuse, in one line, the options that do not go with ``option`` (a mode that
        checks nothing: ``--redeliver``, ``--acknowledge``)."""
        others = [
            name
            for name, given in (
                ("--dry-run", options["dry_run"]),
                ("--ecommerce-id", options["ecommerce_id"]),
                ("--limit", options["limit"] is not None),
                ("--workers", options["workers"] is not None),
                ("--from-date", options["from_date"] is not None),
                ("--to-date", options["to_date"] is not None),
                ("--no-signals", not options["signals"]),
                ("--watch", options["watch"]),
                ("--interval", options["interval"] is not None),
                ("--iterations", options["iterations"] is not None),
                ("--health", options["health"]),
                ("--max-age", options["max_age"] is not None),
                ("--redeliver", options["redeliver"] is not None),
                ("--acknowledge", options["acknowledge"] is not None),
            )
            if given and name != option
        ]
        if others:
            self._fail(f"{option} does not go with {', '.join(others)}")

    def _acknowledge(self, options: dict[str, Any]) -> NoReturn:
        """``--acknowledge``: mark given-up receivers as settled by hand; exit 0, or 2
        (nothing changed) for bad ids or options. Only the database is read."""
        self._alone("--acknowledge", options)
        try:
            ids = outbox.parse_ids(options["acknowledge"], "--acknowledge")
            acknowledged = outbox.acknowledge(ids)
        except (outbox.RedeliveryError, outbox.AcknowledgeError) as error:
            self._fail(str(error))
        if self._json:
            self.stdout.write(json.dumps({"acknowledged": acknowledged, "exit_code": 0}))
        elif self._verbosity >= 1:
            listed = ", ".join(map(str, acknowledged)) or "none left to acknowledge"
            self.stdout.write(
                f"{PROGRAM}: acknowledged {len(acknowledged)} given-up receiver(s): {listed}; "
                "runs no longer list them and --health no longer counts them"
            )
        sys.exit(0)

    def _redeliver(self, options: dict[str, Any], conf: Any) -> NoReturn:
        """``--redeliver``: call failed receivers again now; exit 0 when each was delivered,
        1 when one failed again, 2 (nothing called) for bad ids or options."""
        self._alone("--redeliver", options)
        try:
            attempts = outbox.redeliver(outbox.parse_ids(options["redeliver"]), conf=conf)
        except outbox.RedeliveryError as error:
            self._fail(str(error))
        exit_code = EXIT_ERRORS if attempts.failed or attempts.problems else 0
        if self._json:
            self.stdout.write(
                json.dumps(
                    {
                        "redelivered": len(attempts.done),
                        "delivered": attempts.delivered,
                        "failed": attempts.failed,
                        "given_up": attempts.given_up,
                        "results": [
                            {
                                "id": attempt.delivery_id,
                                "receiver": attempt.receiver,
                                "ecommerce_id": str(attempt.ecommerce_id),
                                "delivered": attempt.delivered,
                                "error": attempt.error,
                            }
                            for attempt in attempts.done
                        ],
                        "errors": [
                            {"id": pk, "reason": reason} for pk, reason in attempts.problems
                        ],
                        "exit_code": exit_code,
                    }
                )
            )
        elif self._verbosity >= 1 or attempts.failed or attempts.problems:
            lines = [
                f"{PROGRAM}: called {len(attempts.done)} failed receiver(s) again: "
                f"{attempts.delivered} delivered, {attempts.failed} failed again"
            ]
            lines += [
                f"    {attempt.ecommerce_id}: {attempt.description}"
                for attempt in attempts.done
                if not attempt.delivered
            ]
            lines += [
                f"    -: failed receiver {pk} could not be called: {reason}"
                for pk, reason in attempts.problems
            ]
            self.stdout.write("\n".join(lines))
        sys.exit(exit_code)

    # -- output ------------------------------------------------------------------------------

    def _fail(self, message: str, exit_code: int = EXIT_CANNOT_RUN) -> NoReturn:
        self._end_progress()
        self.fail(message, exit_code)

    def _fail_with_report(
        self, report: RunReport, message: str, exit_code: int | None = None
    ) -> NoReturn:
        """End a run that could not finish (credentials rejected, the connection lost, a
        second signal): its summary, then the one line; with ``--json`` one document, the
        summary with ``error`` set to that line. ``exit_code``: the report's unless told."""
        self._end_progress()
        if not self._json:
            self._print_report(report, always=True)
        code = report.exit_code if exit_code is None else exit_code
        self.fail(message, code, document=report.as_json())

    def _print_report(self, report: RunReport, *, always: bool = False) -> None:
        """The run's summary: its JSON document, or its lines for a person. Nothing (one line
        on a terminal) when the run has nothing to say, unless a person asked for this run
        (``--dry-run``, ``--ecommerce-id``, a backfill), ``-v 2`` or ``always``."""
        if self._json:
            self.stdout.write(json.dumps(report.as_json()))
            return
        if self._verbosity < 1 and not report.errors:
            return
        if report.quiet and self._verbosity < 2 and not (always or self._asked):
            if self.stdout.isatty():
                self.stdout.write(
                    f"{PROGRAM}: checked {report.checked} payment(s) in "
                    f"{report.duration_seconds:.2f} s; nothing changed"
                )
            return
        if report.backfill is not None:
            lines = self._backfill_lines(report)
        else:
            lines = self._run_lines(report)
        lines += [
            f"    {error['ecommerce_id'] or '-'}: {error['reason']}" for error in report.errors
        ]
        if report.errors_not_listed:
            lines.append(f"    and {report.errors_not_listed} more")
        self.stdout.write("\n".join(lines))

    def _run_lines(self, report: RunReport) -> list[str]:
        t = report.transitions
        title = "dry run, nothing written: " if report.dry_run else ""
        lines = [
            f"{PROGRAM}: {title}checked {report.checked} payment(s) in "
            f"{report.duration_seconds:.2f} s",
            f"  unchanged: {report.unchanged}",
            f"  {'would be ' if report.dry_run else ''}completed: {t['completed']}, "
            f"cancelled: {t['cancelled']}, expired: {t['expired']}, "
            f"refunds: {t['refund_sent']}, held (mismatched): {t['mismatched']}",
            f"  {'would capture' if report.dry_run else 'captured'}: {report.captured}, "
            f"given up: {report.given_up}",
            f"  signals sent: {report.signals_sent} ({report.redispatched} left by an earlier "
            f"run), receiver errors: {report.receiver_errors}",
            f"  errors: {report.error_count}{_by_kind(report)}",
        ]
        receivers = report.receivers
        if receivers["retried"] or receivers["failing"] or receivers["given_up_unacknowledged"]:
            lines.append(
                f"  failed receivers: retried {receivers['retried']}, delivered "
                f"{receivers['delivered']}, given up {receivers['given_up']}, still failing "
                f"{receivers['failing']}"
                + (f" (since {receivers['failing_since']})" if receivers["failing"] else "")
                + (
                    f", given up and not acknowledged {receivers['given_up_unacknowledged']}"
                    if receivers["given_up_unacknowledged"]
                    else ""
                )
            )
        if report.refund_scan is not None:
            scan = report.refund_scan
            unmatched = scan.get("unmatched") or 0
            lines.append(
                f"  refund scan: {scan['rows']} report row(s), {scan['refunds']} new refund(s)"
                + (f", {unmatched} matching no payment (listed in the admin)" if unmatched else "")
            )
        return lines

    def _backfill_lines(self, report: RunReport) -> list[str]:
        """A backfill's summary: what it imported, not what a poll would count."""
        done, t = report.backfill, report.transitions
        options = self._options
        skipped = ", ".join(f"{n} {kind}" for kind, n in done["skipped"].items()) or "none"
        signals = (
            f"signals sent: {report.signals_sent}, receiver errors: {report.receiver_errors}"
            if options.signals
            else "no signals sent (--no-signals: history recorded quietly)"
        )
        return [
            f"{PROGRAM}: backfill {options.from_date} to {options.to_date}: {done['rows']} "
            f"report row(s) in {done['chunks']} range(s) in {report.duration_seconds:.2f} s",
            f"  payments: created {done['payments_created']}, updated "
            f"{done['payments_updated']}, already up to date {done['payments_unchanged']}",
            f"  completed: {t['completed']}, held (mismatched): {t['mismatched']}, "
            f"refunds: {t['refund_sent']}",
            f"  skipped: {skipped}; rows not imported: {len(done['unparsable'])}",
            f"  {signals}",
            f"  errors: {report.error_count}{_by_kind(report)}",
        ]

    def _change_printer(self) -> Any:
        """``on_change`` for a run: a line per changed payment with ``-v 2`` (not ``--json``)."""
        return self._print_change if self._verbosity >= 2 and not self._json else None

    def _print_change(self, change: Change) -> None:
        verb = "would send" if self._dry_run else "signal"
        self.stdout.write(
            f"{_LABELS[change.kind]:<10} {change.ecommerce_id}  ${change.amount}  "
            f"{change.metadata_1 or '-'} ({verb} {change.signal})"
        )
        self.stdout.flush()

    # -- progress bar --------------------------------------------------------------------

    def _show_progress(self) -> bool:
        if self._json or self._verbosity < 1:
            return False
        try:
            return bool(self.stderr.isatty())
        except (AttributeError, ValueError):
            return False

    def _progress(self, done: int, total: int) -> None:
        filled = BAR_WIDTH if not total else BAR_WIDTH * done // total
        self.stderr.write(  # plain: Django would draw stderr in its error colour
            f"\r[{'#' * filled}{'-' * (BAR_WIDTH - filled)}] {done}/{total}",
            ending="",
            style_func=_plain,
        )
        self.stderr.flush()
        self._bar_shown = True

    def _end_progress(self) -> None:
        if getattr(self, "_bar_shown", False):
            self.stderr.write("")
            self._bar_shown = False


def _by_kind(report: RunReport) -> str:
    """`` (2 payment_not_checked, 1 receiver_failing)``, or nothing without errors."""
    kinds = ", ".join(f"{n} {kind}" for kind, n in sorted(report.error_kinds.items()))
    return f" ({kinds})" if kinds else ""
