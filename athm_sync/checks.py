"""System checks: ``manage.py check`` reports what is wrong with ``ATHM_SYNC`` and its URLs."""

from typing import Any

from django.apps import apps
from django.core import checks
from django.urls import NoReverseMatch, reverse

from athm_sync.conf import find_problems, raw_settings

# Missing tokens are reported by `check --deploy` only: a project without its secrets (CI, a
# new developer, `migrate` in a build step) must still run its other commands. The
# `athm_sync` command and the webhook view refuse to work without them all the same.
TOKEN_CHECKS = ("athm_sync.E002", "athm_sync.E003")


def _messages(tokens: bool) -> list[checks.CheckMessage]:
    messages: list[checks.CheckMessage] = []
    for problem in find_problems(raw_settings()):
        if (problem.check_id in TOKEN_CHECKS) != tokens:
            continue
        level = checks.Error if problem.is_error else checks.Warning
        messages.append(level(problem.message, hint=problem.hint, id=problem.check_id))
    return messages


@checks.register("athm_sync")
def check_settings(app_configs: Any = None, **kwargs: Any) -> list[checks.CheckMessage]:
    """One message per problem found by :func:`athm_sync.conf.find_problems`, but tokens."""
    return _messages(tokens=False)


@checks.register("athm_sync", deploy=True)
def check_tokens(app_configs: Any = None, **kwargs: Any) -> list[checks.CheckMessage]:
    """E002/E003, missing tokens: with ``check --deploy`` only."""
    return _messages(tokens=True)


@checks.register("athm_sync", checks.Tags.urls)
def check_webhook_url(app_configs: Any = None, **kwargs: Any) -> list[checks.CheckMessage]:
    """W004: a webhook secret is set, but no URL leads to the webhook view."""
    raw = raw_settings()
    if not isinstance(raw, dict) or any(p.check_id == "athm_sync.E005" for p in find_problems(raw)):
        return []
    secret = raw.get("WEBHOOK_SECRET") or ""
    if not secret:
        return []
    try:
        reverse("athm_sync:webhook", kwargs={"token": secret})
    except NoReverseMatch:
        return [
            checks.Warning(
                "ATHM_SYNC['WEBHOOK_SECRET'] is set, but the URLconf does not include "
                "athm_sync.urls: ATH Móvil's webhooks would get 404.",
                hint='Add path("athm/", include("athm_sync.urls")) to your urlpatterns, or '
                "leave WEBHOOK_SECRET empty to turn webhooks off.",
                id="athm_sync.W004",
            )
        ]
    return []


@checks.register("athm_sync")
def check_command_order(app_configs: Any = None, **kwargs: Any) -> list[checks.CheckMessage]:
    """W005: django-athm is installed before athm_sync, so ``manage.py athm_sync`` runs its
    command (a report reconciler with required dates), not ours.

    Django resolves a command name both apps define to the app listed first in
    ``INSTALLED_APPS``.
    """
    names = [config.name for config in apps.get_app_configs()]
    if "django_athm" not in names or "athm_sync" not in names:
        return []
    if names.index("django_athm") > names.index("athm_sync"):
        return []
    return [
        checks.Warning(
            "django_athm comes before athm_sync in INSTALLED_APPS, so `manage.py athm_sync` "
            "runs django-athm's command (its transaction report sync), not athm_sync's.",
            hint='List "athm_sync" before "django_athm" in INSTALLED_APPS, or remove '
            "django_athm once its payments are imported (manage.py athm_import_django_athm).",
            id="athm_sync.W005",
        )
    ]
