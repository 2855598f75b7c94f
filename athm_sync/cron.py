"""The job for django-crontab: ``CRONJOBS = [("* * * * *", "athm_sync.cron.sync", ...)]``.

django-crontab calls the job's function inside ``manage.py crontab run``, logs any exception
with a traceback and exits 0 whatever happened, so cron never sees a failure. This job runs
``manage.py athm_sync`` and turns its exit status into one log line instead (on
``athm_sync.cron``, at ERROR): with the job's output sent to a log file (the README's
example) and ``manage.py athm_sync --health`` in your monitoring, a failing run is seen. A run
with nothing to say writes nothing there, so the file grows with events, not every minute.
"""

from __future__ import annotations

import logging

from django.core.management import call_command

logger = logging.getLogger("athm_sync.cron")


def sync(*args: str) -> int:
    """Run ``manage.py athm_sync`` with ``args``; returns its exit status, logging it if not 0."""
    try:
        call_command("athm_sync", *args)
    except SystemExit as exit_:
        code = exit_.code if isinstance(exit_.code, int) else 1
        if code:
            logger.error(
                "athm_sync exited %d: see its summary above, the sync runs in the admin, "
                "or manage.py athm_sync --health",
                code,
            )
        return code
    return 0
