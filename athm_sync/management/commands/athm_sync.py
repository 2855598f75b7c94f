"""``manage.py athm_sync``: check every due payment with ATH Móvil and apply what changed.

Exit status: 0 when every due payment was checked, 1 when some could not be checked after
retries or a signal receiver is failing (each listed in the summary), or the database
connection died mid-run, 2 when the run cannot happen (bad settings or options, credentials
rejected); 143 (SIGTERM) or 130 (SIGINT) when a signal stopped it (:mod:`athm_sync.stopping`).
Expected failures print one line on
stderr, never a traceback.

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
        "and send its signal. Exit 0: all checked; 1: some could not be checked, or a signal "
        "receiver is failing; 2: cannot run; 143/130: stopped by SIGTERM/SIGINT."
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
            help="Print one JSON summary on stdout and nothing else there.",
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
            help="Check nothing: exit 0 if a run succeeded within --max-age, else 1.",
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

    def handle(self, *args: Any, **options: Any) -> None:
        self._json = options["json"]
        self._verbosity = int(options["verbosity"])
        self._bar_shown = False
        self._dry_run = bool(options["dry_run"])
        try:
            conf = get_settings()
        except ImproperlyConfigured as error:
            self._fail(f"bad ATHM_SYNC setting: {error}")
        if options["redeliver"] is not None:
            self._redeliver(options, conf)
        if options["health"] or options["max_age"] is not None:
            self._health(options)
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
        if options["watch"] or options["interval"] is not None or options["iterations"]:
            self._watch(run_options, conf, options)
        stop = StopRequest()
        runner = Runner(
            run_options,
            conf=conf,
            progress=self._progress if self._show_progress() else None,
            on_change=self._print_change if self._verbosity >= 2 and not self._json else None,
            should_stop=stop,
        )
        try:
            with signals_stop(stop):
                report = runner.run()
        except CannotRun as error:
            self._end_progress()
            if runner.report.exit_code != EXIT_CANNOT_RUN:  # refused before anything ran
                self._fail(str(error))
            self._print_report(runner.report)
            self._fail(str(error))
        except ConnectionLost as error:
            self._end_progress()
            self._print_report(runner.report)
            self._fail(str(error), runner.report.exit_code)
        except StopNow as stopped:
            self._end_progress()
            self._print_report(runner.report)
            self._fail(f"{stopped}; its claims were released", stopped.exit_code)
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
        """``--watch``: passes until SIGTERM/SIGINT; exit 0 when stopped or done."""
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
        """One pass of --watch: its JSON line, or its summary when it did or met something."""
        if self._json:
            self.stdout.write(json.dumps(report.as_json()))
            self.stdout.flush()
        elif (
            report.checked
            or report.signals_sent
            or report.receivers["retried"]
            # Receivers still failing are listed in every pass's errors: said when they change.
            or report.error_count > report.receivers["failing"]
        ):
            self._print_report(report)

    def _health(self, options: dict[str, Any]) -> NoReturn:
        """``--health``: one line (or the JSON document), exit 0 when healthy, 1 when not."""
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
        sys.exit(0 if health.healthy else 1)

    def _redeliver(self, options: dict[str, Any], conf: Any) -> NoReturn:
        """``--redeliver``: call failed receivers again now; exit 0 when each was delivered,
        1 when one failed again, 2 (nothing called) for bad ids or options."""
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
            )
            if given
        ]
        if others:
            self._fail(f"--redeliver does not go with {', '.join(others)}")
        try:
            attempts = outbox.redeliver(outbox.parse_ids(options["redeliver"]), conf=conf)
        except outbox.RedeliveryError as error:
            self._fail(str(error))
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
        sys.exit(EXIT_ERRORS if attempts.failed or attempts.problems else 0)

    # -- output ------------------------------------------------------------------------------

    def _fail(self, message: str, exit_code: int = EXIT_CANNOT_RUN) -> NoReturn:
        self._end_progress()
        self.fail(message, exit_code)

    def _print_report(self, report: RunReport) -> None:
        if self._json:
            self.stdout.write(json.dumps(report.as_json()))
            return
        if self._verbosity < 1 and not report.errors:
            return
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
            f"  errors: {report.error_count}",
        ]
        receivers = report.receivers
        if receivers["retried"] or receivers["failing"]:
            lines.append(
                f"  failed receivers: retried {receivers['retried']}, delivered "
                f"{receivers['delivered']}, given up {receivers['given_up']}, still failing "
                f"{receivers['failing']}"
                + (f" (since {receivers['failing_since']})" if receivers["failing"] else "")
            )
        if report.refund_scan is not None:
            scan = report.refund_scan
            unmatched = scan.get("unmatched") or 0
            lines.append(
                f"  refund scan: {scan['rows']} report row(s), {scan['refunds']} new refund(s)"
                + (f", {unmatched} matching no payment (listed in the admin)" if unmatched else "")
            )
        if report.backfill is not None:
            done = report.backfill
            skipped = ", ".join(f"{n} {kind}" for kind, n in done["skipped"].items()) or "none"
            lines.append(
                f"  backfill: {done['rows']} report row(s) in {done['chunks']} range(s); "
                f"payments created {done['payments_created']}, updated "
                f"{done['payments_updated']}; refunds {done['refunds']}; skipped {skipped}"
            )
        lines += [
            f"    {error['ecommerce_id'] or '-'}: {error['reason']}" for error in report.errors
        ]
        if report.errors_not_listed:
            lines.append(f"    and {report.errors_not_listed} more")
        self.stdout.write("\n".join(lines))

    def _print_change(self, change: Change) -> None:
        verb = "would send" if self._dry_run else "signal"
        self.stdout.write(
            f"{_LABELS[change.kind]:<10} {change.ecommerce_id}  ${change.amount}  "
            f"{change.metadata_1 or '-'} ({verb} {change.signal})"
        )

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
