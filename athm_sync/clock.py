"""The app's one clock: aware datetimes in UTC, whatever the project's ``USE_TZ`` says.

Django's ``clock.now()`` returns a naive local time when ``USE_TZ = False``; everything in
this app compares and stores aware UTC moments, so it asks this function instead. Converting to
and from what the database holds under ``USE_TZ = False`` is the model fields' job
(``athm_sync.fields``), not the callers'.
"""

from __future__ import annotations

from datetime import UTC, datetime


def now() -> datetime:
    """The current moment, aware, in UTC (time-machine and similar clocks move it too)."""
    return datetime.now(UTC)
