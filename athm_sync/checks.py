"""System checks: ``manage.py check`` reports what is wrong with ``ATHM_SYNC``."""

from typing import Any

from django.core import checks

from athm_sync.conf import find_problems, raw_settings


@checks.register("athm_sync")
def check_settings(app_configs: Any = None, **kwargs: Any) -> list[checks.CheckMessage]:
    """One message per problem found by :func:`athm_sync.conf.find_problems`."""
    messages: list[checks.CheckMessage] = []
    for problem in find_problems(raw_settings()):
        level = checks.Error if problem.is_error else checks.Warning
        messages.append(level(problem.message, hint=problem.hint, id=problem.check_id))
    return messages
