"""The webhook view: ATH Móvil's fast path into the reconciler.

It stores what it accepts and verifies it with ATH Móvil before anything changes (see
:mod:`athm_sync.inbox`). Answers:

- 404 when ``WEBHOOK_SECRET`` is not set (webhooks are opt-in) or the token in the URL is
  neither it nor ``WEBHOOK_PREVIOUS_SECRET`` (accepted too while rotating);
- 405 for any method but POST; 413 for a body over 64 KiB;
- 400 with ``{"error": reason}`` for a body that is not a JSON object of a webhook's shape;
- 200 with ``{"outcome": ..., "event": id, "duplicate": bool}`` for everything stored,
  duplicates included, even when ATH Móvil could not be asked in time (the event is then
  ``pending`` and the next run finishes it);
- 503 only when the event could not be stored at all (the database is down); once it is
  stored, any failure leaves it ``pending`` and the answer is 200.

It never answers 500, whatever the body. The URL holds the secret, so no answer is logged
with it: Django's ``django.request`` logger, which writes the path of every 4xx answer, is
told each answer was logged already, and the view logs its own line with the token masked
(``webhook/****/``) on ``athm_sync.views``.
"""

from __future__ import annotations

import json
import logging

from django.core.exceptions import ImproperlyConfigured
from django.db import transaction
from django.http import HttpRequest, HttpResponse, HttpResponseNotAllowed, JsonResponse
from django.utils.crypto import constant_time_compare
from django.views.decorators.csrf import csrf_exempt

from athm_sync import inbox
from athm_sync.conf import AthmSyncSettings, get_settings

logger = logging.getLogger("athm_sync.views")


@csrf_exempt
@transaction.non_atomic_requests
def webhook(request: HttpRequest, token: str) -> HttpResponse:
    """Receive one ATH Móvil webhook POSTed to ``webhook/<token>/``."""
    try:
        conf = get_settings()
    except ImproperlyConfigured as error:
        logger.error("Webhook refused: bad ATHM_SYNC setting: %s", error)
        return _answer(request, token, _error(404, "not found"), "bad ATHM_SYNC setting")
    which = _matching_secret(token, conf)
    if which is None:
        return _answer(request, token, _error(404, "not found"), "not the webhook secret")
    if which == "previous":
        logger.info("Webhook on WEBHOOK_PREVIOUS_SECRET: ATH Móvil still posts to the old URL")
    if request.method != "POST":
        return _answer(request, token, HttpResponseNotAllowed(["POST"]), "POST only")
    try:
        body = _read_limited(request)
    except OSError:  # the sender hung up mid-body (Django's UnreadablePostError)
        return _answer(request, token, _error(400, "the body could not be read"))
    if body is None:
        too_large = f"the body is over {inbox.MAX_BODY_BYTES // 1024} KiB"
        return _answer(request, token, _error(413, too_large))
    try:
        notice = inbox.parse(inbox.read_body(body))
    except inbox.InvalidWebhook as error:
        return _answer(request, token, _error(400, str(error)))
    try:
        event, duplicate = inbox.receive(notice, request.META.get("REMOTE_ADDR"), conf=conf)
    except Exception:  # not stored (the database is down): ATH Móvil may send it again
        logger.exception("Webhook %s could not be stored", notice.idempotency_key)
        unstored = "the event could not be stored; send it again later"
        return _answer(request, token, _error(503, unstored))
    return JsonResponse({"outcome": event.outcome, "event": event.pk, "duplicate": duplicate})


def _matching_secret(token: str, conf: AthmSyncSettings) -> str | None:
    """``"current"`` or ``"previous"``: which secret ``token`` is; ``None`` for neither.
    Both are compared, in constant time, so the answer's timing tells nothing."""
    current = bool(conf.webhook_secret) and constant_time_compare(token, conf.webhook_secret)
    previous = bool(conf.webhook_previous_secret) and constant_time_compare(
        token, conf.webhook_previous_secret
    )
    return "current" if current else "previous" if previous else None


def masked_path(path: str, token: str) -> str:
    """``path`` with the webhook token in it replaced by ``****``."""
    return path.replace(token, "****") if token else path


def _answer(
    request: HttpRequest, token: str, response: HttpResponse, reason: str = ""
) -> HttpResponse:
    """Log a refusal with the token masked, and keep Django from logging it with the path."""
    reason = reason or json.loads(response.content).get("error", "")
    logger.info(
        "Webhook %s %s %s: %s",
        request.method,
        masked_path(request.path, token),
        response.status_code,
        reason,
    )
    response._has_been_logged = True  # django.utils.log.log_response: do not log it again
    return response


def _read_limited(request: HttpRequest) -> bytes | None:
    """The body, or ``None`` when it is larger than the limit (read no further than that)."""
    try:
        declared = int(request.META.get("CONTENT_LENGTH") or 0)
    except ValueError:
        declared = 0
    if declared > inbox.MAX_BODY_BYTES:
        return None
    body = request.read(inbox.MAX_BODY_BYTES + 1)
    return None if len(body) > inbox.MAX_BODY_BYTES else body


def _error(status: int, reason: str) -> JsonResponse:
    return JsonResponse({"error": reason}, status=status)
