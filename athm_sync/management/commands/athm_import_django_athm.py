"""``manage.py athm_import_django_athm``: copy django-athm's payments and refunds into ours.

Exit status: 0 when every django-athm payment is in athm_sync's tables (imported now or
already there), 1 when some could not be imported (each listed with its reason), 2 when the
import cannot run (django-athm's tables are not there, a bad option). ``--dry-run`` writes
nothing and prints what a real run would do. No signal is sent: the rows are history. What is
imported and how is decided in :mod:`athm_sync.importing`; this module parses and prints.
"""

from __future__ import annotations

import json
import sys
from typing import Any

from django.core.management.base import CommandParser

from athm_sync.importing import CannotImport, ImportReport, import_django_athm
from athm_sync.management.base import OneLineErrorCommand

PROGRAM = "athm_import_django_athm"
# Reasons listed one a line; the rest are counted (all of them are in --json).
LISTED = 50


class Command(OneLineErrorCommand):
    program = PROGRAM
    help = (
        "Copy the django-athm package's payments and refunds (tables athm_payment, athm_refund) "
        "into athm_sync's, sending no signal; payments already in athm_sync are left as they "
        "are. Exit 0: all in athm_sync; 1: some could not be imported; 2: cannot run."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--dry-run",
            action="store_true",
            help="Read django-athm's tables and report what would be imported; write nothing.",
        )
        parser.add_argument(
            "--json",
            action="store_true",
            help="Print one JSON summary on stdout and nothing else there.",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            report = import_django_athm(dry_run=options["dry_run"])
        except CannotImport as error:
            self.fail(str(error))
        if options["json"]:
            self.stdout.write(json.dumps(report.as_json()))
        elif int(options["verbosity"]) >= 1 or report.refused:
            self.stdout.write("\n".join(summary(report)))
        if report.exit_code:
            sys.exit(report.exit_code)


def summary(report: ImportReport) -> list[str]:
    """The lines the command prints for ``report``."""
    title = "dry run, nothing written: " if report.dry_run else ""
    would = "would be " if report.dry_run else ""
    lines = [
        f"{PROGRAM}: {title}read {report.payments_read} payment(s) and {report.refunds_read} "
        "refund(s) from django-athm's tables"
    ]
    if report.imported:
        statuses = ", ".join(
            f"{n} {status}" for status, n in sorted(report.imported_by_status.items())
        )
        lines.append(
            f"  {would}imported: {report.imported} payment(s) ({statuses}) with "
            f"{report.refunds_imported} refund(s)"
        )
    else:
        new = ": nothing new" if report.already_present else ""
        lines.append(f"  {would}imported: 0 payment(s){new}")
    theirs = f" (django-athm holds {report.refunds_left} refund(s) of them)"
    lines.append(
        f"  already in athm_sync, left as they are: {report.already_present} payment(s)"
        f"{theirs if report.refunds_left else ''}"
    )
    lines.append(f"  not imported: {len(report.refused)} payment(s)")
    lines += [f"    {item['ecommerce_id']}: {item['reason']}" for item in report.refused[:LISTED]]
    if len(report.refused) > LISTED:
        lines.append(f"    and {len(report.refused) - LISTED} more (--json lists them all)")
    lines.append(
        f"  not carried over: {report.clients_not_carried} client(s), "
        f"{report.webhook_events_not_carried} webhook event(s), "
        f"{report.messages_not_carried} payment message(s)"
    )
    due = (
        f"; {report.due} open payment(s) {'would be ' if report.dry_run else ''}due: the next "
        "athm_sync run checks them with ATH Móvil"
        if report.due
        else ""
    )
    lines.append(f"  signals sent: 0 (history){due}")
    return lines
