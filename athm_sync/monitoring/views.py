"""The health endpoint and the Prometheus metrics view; served only where a shop routes them.

``health``: the verdict of ``manage.py athm_sync --health`` as JSON, 200 when healthy and 503
when not, for uptime monitors, load balancers and container probes (GET or HEAD). It says
counts and times only: the ``reason`` line, which quotes the latest run's errors (ATH Móvil's
messages, a receiver's exception), is added only for a signed-in user who may view the run
history in the admin.

``metrics``: the Prometheus exposition of :class:`~athm_sync.monitoring.metrics.AthmSyncCollector`
(text format, or OpenMetrics when the scraper asks for it); without ``prometheus_client`` it
answers 503 saying what to install.

Both read a fixed handful of indexed rows per request, answer ``Cache-Control: no-store``, take
the window as ``?max_age=10m`` or as the ``max_age`` argument of the URL pattern, and answer a
database they cannot use with 503 and one line (logged on ``athm_sync.monitoring``), never a
traceback.
"""

from __future__ import annotations

import logging
from datetime import timedelta
from typing import Any

from django.db import DatabaseError
from django.http import HttpRequest, HttpResponse, HttpResponseNotAllowed, JsonResponse
from django.utils.cache import add_never_cache_headers

from athm_sync import clock, database
from athm_sync.health import DEFAULT_MAX_AGE, check_health, parse_duration

logger = logging.getLogger("athm_sync.monitoring")

# What anyone who reaches the URL may read of Health.as_json(): counts and times, nothing a
# run's errors say.
PUBLIC_KEYS = (
    "healthy",
    "last_success",
    "max_age_seconds",
    "given_up",
    "held",
    "receivers_failing",
    "receivers_failing_since",
    "receivers_given_up",
    "receivers_given_up_unacknowledged",
    "payments_failing",
    "latest_run_exit_code",
    "latest_run_finished_at",
)
UNUSABLE = "the database cannot be used"
NO_PROMETHEUS = 'prometheus_client is not installed: pip install "django-athm-sync[metrics]"'


def health(request: HttpRequest, max_age: str | timedelta | None = None) -> HttpResponse:
    """``GET``/``HEAD``: 200 ``{"healthy": true, ...}`` or 503 ``{"healthy": false, ...}``."""
    if request.method not in ("GET", "HEAD"):
        return _finish(request, HttpResponseNotAllowed(["GET", "HEAD"]))
    try:
        span = _max_age(request, max_age)
    except ValueError as error:
        return _finish(request, JsonResponse({"error": str(error)}, status=400))
    now = clock.now()
    try:
        verdict = check_health(span, now=now)
    except DatabaseError as error:
        return _finish(request, _database_unusable(error, json=True))
    answer: dict[str, Any] = {key: verdict.as_json()[key] for key in PUBLIC_KEYS}
    last = verdict.last_success
    answer["last_success_age_seconds"] = (
        None if last is None else round(max(0.0, (now - last).total_seconds()), 3)
    )
    # What is wrong by kind only: the messages can quote a run's errors.
    answer["problems"] = [problem.kind for problem in verdict.problems]
    answer["checked_at"] = now.isoformat()
    if _may_see_the_runs(request):
        answer["reason"] = verdict.reason
    return _finish(request, JsonResponse(answer, status=200 if verdict.healthy else 503))


def metrics(request: HttpRequest, max_age: str | timedelta | None = None) -> HttpResponse:
    """``GET``/``HEAD``: the metrics in the exposition format the scraper asked for."""
    if request.method not in ("GET", "HEAD"):
        return _finish(request, HttpResponseNotAllowed(["GET", "HEAD"]))
    try:
        from prometheus_client import CollectorRegistry
        from prometheus_client.exposition import choose_encoder

        from athm_sync.monitoring.metrics import AthmSyncCollector
    except ImportError:
        logger.error("The metrics view answers 503: %s", NO_PROMETHEUS)
        response = HttpResponse(f"{NO_PROMETHEUS}\n", status=503, content_type="text/plain")
        return _finish(request, response)
    try:
        span = _max_age(request, max_age)
    except ValueError as error:
        response = HttpResponse(f"{error}\n", status=400, content_type="text/plain")
        return _finish(request, response)
    registry = CollectorRegistry(auto_describe=False)
    registry.register(AthmSyncCollector(span))
    encode, content_type = choose_encoder(request.headers.get("Accept", ""))
    try:
        body = encode(registry)
    except DatabaseError as error:
        return _finish(request, _database_unusable(error, json=False))
    return _finish(request, HttpResponse(body, content_type=content_type))


def _max_age(request: HttpRequest, default: str | timedelta | None) -> timedelta:
    """The window: ``?max_age=``, else the URL pattern's ``max_age``, else 10 minutes."""
    given = request.GET.get("max_age", default)
    if given is None:
        return DEFAULT_MAX_AGE
    if isinstance(given, timedelta):
        return given
    try:
        return parse_duration(given)
    except ValueError as error:
        raise ValueError(f"max_age {error}") from None


def _may_see_the_runs(request: HttpRequest) -> bool:
    """Whether the request is a signed-in user allowed to view the run history (the admin's);
    a request without a session cookie costs no query."""
    user = getattr(request, "user", None)
    if user is None or not user.is_authenticated:
        return False
    return user.has_perm("athm_sync.view_syncrun")


def _database_unusable(error: DatabaseError, *, json: bool) -> HttpResponse:
    """503 saying the database cannot be used; what the database said (it can name hosts and
    tables) goes to the log only."""
    logger.error("Monitoring answers 503: %s: %s", UNUSABLE, database.first_line(error))
    if json:
        return JsonResponse({"healthy": False, "error": UNUSABLE}, status=503)
    return HttpResponse(f"{UNUSABLE}\n", status=503, content_type="text/plain")


def _finish(request: HttpRequest, response: HttpResponse) -> HttpResponse:
    """Never cached; a HEAD gets the headers of the GET and no body. Not logged by Django: a
    503 is this view's answer, not a server error, and ``django.request`` would write (or mail
    the ADMINS) an ERROR at every probe while the sync is unhealthy."""
    add_never_cache_headers(response)
    response._has_been_logged = True  # django.utils.log.log_response: nothing to add
    if request.method == "HEAD":
        length = len(response.content)
        response.content = b""
        response["Content-Length"] = str(length)
    return response


__all__ = ["health", "metrics"]
