"""What the app's management commands share: expected failures are one line and exit 2.

Cron, systemd and people read a command's exit status and its last line of stderr, so a
failure the command expects (bad options, bad settings, ATH Móvil refusing) is never a
traceback, an argparse usage block or Django's system-check report. With ``--json`` the
failure is also the one JSON document on stdout, ``{"exit_code": 2, "error": "..."}``, so a
monitor that parses stdout always gets a document.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from typing import Any, NoReturn

from django.core.management.base import BaseCommand, CommandParser
from django.db import OperationalError, ProgrammingError

from athm_sync.runner import EXIT_CANNOT_RUN


class OneLineErrorCommand(BaseCommand):
    """A command whose expected failures print ``<program>: error: <message>`` and exit 2."""

    program = ""
    # The commands validate ATHM_SYNC themselves and say what is wrong in one line; Django's
    # checks would print their multi-line block and exit 1 before they could.
    requires_system_checks: list[str] = []
    # Whether --json was given: failures are then a JSON document on stdout too.
    json_output = False
    _argv: Sequence[str] = ()

    def run_from_argv(self, argv: list[str]) -> None:
        """As Django's, keeping the arguments: an option argparse refuses is reported before
        the options exist, and ``--json`` among them still asks for a JSON document."""
        self._argv = argv[2:]
        super().run_from_argv(argv)

    def create_parser(self, prog_name: str, subcommand: str, **kwargs: Any) -> CommandParser:
        """Django's parser, but an unparsable option from the command line is one line on
        stderr (exit 2) instead of argparse's usage block."""
        parser = super().create_parser(prog_name, subcommand, **kwargs)
        usage_error = parser.error

        def one_line_error(message: str) -> NoReturn:
            if not parser.called_from_command_line:
                usage_error(message)  # call_command: Django raises CommandError
            if _asks_for_json(self._argv):
                sys.stdout.write(json.dumps(failure_document(EXIT_CANNOT_RUN, message)) + "\n")
            sys.stderr.write(f"{self.program}: error: {message}\n")
            sys.exit(EXIT_CANNOT_RUN)

        parser.error = one_line_error  # type: ignore[method-assign]
        return parser

    def execute(self, *args: Any, **options: Any) -> Any:
        """The command, with a database it cannot use (not migrated, wrong, gone) reported
        in one line and exit 2 instead of a traceback."""
        self.json_output = bool(options.get("json"))
        try:
            return super().execute(*args, **options)
        except (OperationalError, ProgrammingError) as error:
            first_line = (str(error).strip().splitlines() or [type(error).__name__])[0]
            self.fail(
                f"the database cannot be used: {first_line[:200]} "
                "(is it reachable, and migrated with manage.py migrate?)"
            )

    def fail(
        self,
        message: str,
        exit_code: int = EXIT_CANNOT_RUN,
        document: dict[str, Any] | None = None,
    ) -> NoReturn:
        """Print ``message`` as one line on stderr and exit ``exit_code`` (2 unless told).

        With ``--json``, stdout gets one document first: ``document`` (what the command had
        to say, a run's summary) or ``{}``, with ``exit_code`` and ``error`` (the same line).
        """
        line = " ".join(self.scrub(message).split())
        if self.json_output:
            self.stdout.write(json.dumps({**(document or {}), **failure_document(exit_code, line)}))
            self.stdout.flush()
        self.stderr.write(f"{self.program}: error: {line}")
        raise SystemExit(exit_code)

    def scrub(self, text: str) -> str:
        """``text`` as it may be shown; subclasses mask secrets here."""
        return text


def failure_document(exit_code: int, error: str) -> dict[str, Any]:
    """The JSON document of a command that ended with ``error``: ``{"exit_code", "error"}``."""
    return {"exit_code": exit_code, "error": error}


def _asks_for_json(argv: Sequence[str]) -> bool:
    """Whether the command line asks for ``--json`` (argparse also takes ``--js``...)."""
    return any(len(arg) > 3 and "--json".startswith(arg) for arg in argv)
