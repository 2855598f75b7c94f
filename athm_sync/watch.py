"""``manage.py athm_sync --watch``: one run after another, for containers and supervisors.

Each pass is an ordinary run (:class:`athm_sync.runner.Runner`, recorded as a ``SyncRun``);
between passes the loop waits ``--interval`` seconds (default 5), so payments are checked as
soon as they are due: every 5 to 60 seconds before their deadline, as documented. After a pass
in which ATH Móvil was down (unreachable, or failing for several payments in a row) or the
database could not be used, the wait doubles up to ``MAX_BACKOFF`` (5 minutes), and the
outage is logged once when it starts and once when it ends. A database that cannot be used
from the first pass (not migrated, unreachable, wrong) is not an outage but a mistake: the
error is raised, and the command says it in one line and exits 2, as every mode does. One
payment's bad answer does not slow the loop: that payment waits out its own backoff. SIGTERM
or SIGINT ends the loop cleanly: the pass in progress applies the answer in hand, releases
its claims and ends (recorded with exit 143 or 130, as a stopped run is), and the command
exits 0.

Nothing grows from pass to pass: one ATH Móvil client (its connection pool) serves every
pass, the database connection is closed after each, and each pass's report is dropped once
printed.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass

from django.db import DatabaseError, connection

from athm_sync.client import ATHMovilClient
from athm_sync.conf import AthmSyncSettings
from athm_sync.database import ConnectionLost
from athm_sync.runner import Change, Runner, RunOptions, RunReport
from athm_sync.stopping import StopRequest

logger = logging.getLogger("athm_sync.watch")

DEFAULT_INTERVAL = 5.0
MAX_BACKOFF = 300.0


@dataclass
class WatchResult:
    """How the loop ended."""

    passes: int = 0
    failed_passes: int = 0


def watch(
    options: RunOptions,
    conf: AthmSyncSettings,
    stop: StopRequest | threading.Event,
    *,
    interval: float = DEFAULT_INTERVAL,
    iterations: int | None = None,
    on_report: Callable[[RunReport], None] | None = None,
    on_change: Callable[[Change], None] | None = None,
) -> WatchResult:
    """Run pass after pass until ``stop`` is set (or ``iterations`` passes); ``on_report``
    sees each pass's report, ``on_change`` each payment that changed (as a run's). Raises the
    runner's :class:`~athm_sync.runner.CannotRun` (credentials rejected), and the
    ``DatabaseError`` of a database no pass could use yet: a person must look."""
    result = WatchResult()
    worked = False  # whether a pass has reached its end: the database is usable
    wait = interval
    outage_since: int | None = None
    with ATHMovilClient.from_settings(should_stop=stop.is_set) as client:
        while not stop.is_set() and (iterations is None or result.passes < iterations):
            result.passes += 1
            trouble = ""
            try:
                should_stop = stop if isinstance(stop, StopRequest) else stop.is_set
                runner = Runner(
                    options, conf=conf, client=client, should_stop=should_stop, on_change=on_change
                )
                report = runner.run()
            except ConnectionLost as error:
                trouble = str(error)
            except DatabaseError as error:
                if not worked:
                    raise
                trouble = f"the database cannot be used: {error}".splitlines()[0]
            else:
                worked = True
                if on_report is not None:
                    on_report(report)
                if report.ath_down:  # not one payment's bad answer: that waits alone
                    trouble = f"ATH Móvil is failing: {report.errors[0]['reason']}"
            finally:
                connection.close()  # one connection per pass, never more than one open
            if trouble:
                result.failed_passes += 1
                if outage_since is None:
                    outage_since = result.passes
                    logger.error("athm_sync --watch: %s; backing off", trouble)
                wait = min(MAX_BACKOFF, max(wait, interval) * 2)
            else:
                if outage_since is not None:
                    logger.warning(
                        "athm_sync --watch: working again after %d failed pass(es)",
                        result.passes - outage_since,
                    )
                    outage_since = None
                wait = interval
            if iterations is not None and result.passes >= iterations:
                break
            stop.wait(wait)
    return result
