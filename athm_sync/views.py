"""The webhook view: ATH Móvil's fast path into the reconciler.

It stores what it accepts (the body byte for byte, beside its reading) and verifies it with
ATH Móvil before anything changes (see :mod:`athm_sync.inbox`). Answers:

- 404 when ``WEBHOOK_SECRET`` is not set (webhooks are opt-in) or the token in the URL is
  neither it nor ``WEBHOOK_PREVIOUS_SECRET`` (accepted too while rotating);
- 503 for the right token when the rest of ``ATHM_SYNC`` is unusable (a token missing):
  nothing could be verified, so ATH Móvil is asked to send it again later;
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

import logging

from django.core.exceptions import ImproperlyConfigured
from django.db import transaction
from django.http import HttpRequest, HttpResponse, HttpResponseNotAllowed, JsonResponse
from django.utils.crypto import constant_time_compare
from django.views.decorators.csrf import csrf_exempt

from athm_sync import inbox
from athm_sync.conf import AthmSyncSettings, get_settings, raw_settings

logger = logging.getLogger("athm_sync.views")


@csrf_exempt
@transaction.non_atomic_requests
def webhook(request: HttpRequest, token: str) -> HttpResponse:
    """Receive one ATH Móvil webhook POSTed to ``webhook/<token>/``."""
    try:
        conf = get_settings()
    except ImproperlyConfigured as error:
        logger.error("Webhook refused: bad ATHM_SYNC setting: %s", error)
        if not _is_configured_secret(token):
            return _refuse(request, token, 404, "not found", why="bad ATHM_SYNC setting")
        # The sender is ATH Móvil (it knows the secret): tell it to try again later.
        unusable = "webhooks cannot be verified now; try again later"
        return _refuse(request, token, 503, unusable, why="bad ATHM_SYNC setting")
    which = _matching_secret(token, conf)
    if which is None:
        return _refuse(request, token, 404, "not found", why="not the webhook secret")
    if which == "previous":
        logger.info("Webhook on WEBHOOK_PREVIOUS_SECRET: ATH Móvil still posts to the old URL")
    if request.method != "POST":
        return _refuse(request, token, 405, "POST only", response=HttpResponseNotAllowed(["POST"]))
    try:
        body = _read_limited(request)
    except OSError:  # the sender hung up mid-body (Django's UnreadablePostError)
        return _refuse(request, token, 400, "the body could not be read")
    if body is None:
        return _refuse(request, token, 413, f"the body is over {inbox.MAX_BODY_BYTES // 1024} KiB")
    try:
        notice = inbox.read(body)
    except inbox.InvalidWebhook as error:
        return _refuse(request, token, 400, str(error))
    try:
        event, duplicate = inbox.receive(notice, request.META.get("REMOTE_ADDR"), conf=conf)
    except Exception:  # not stored (the database is down): ATH Móvil may send it again
        logger.exception("Webhook %s could not be stored", notice.idempotency_key)
        return _refuse(request, token, 503, "the event could not be stored; send it again later")
    return JsonResponse({"outcome": event.outcome, "event": event.pk, "duplicate": duplicate})


def _matching_secret(token: str, conf: AthmSyncSettings) -> str | None:
    """``"current"`` or ``"previous"``: which secret ``token`` is; ``None`` for neither.
    Both are compared, in constant time, so the answer's timing tells nothing."""
    current = bool(conf.webhook_secret) and constant_time_compare(token, conf.webhook_secret)
    previous = bool(conf.webhook_previous_secret) and constant_time_compare(
        token, conf.webhook_previous_secret
    )
    return "current" if current else "previous" if previous else None


def _is_configured_secret(token: str) -> bool:
    """Whether ``token`` is the raw ``WEBHOOK_SECRET`` or ``WEBHOOK_PREVIOUS_SECRET``, when the
    settings cannot be read whole: ATH Móvil may still post to the old URL mid-rotation, and it
    too must hear "try again later" rather than "not found". Both are compared, in constant
    time."""
    raw = raw_settings()
    matches = [
        isinstance(secret, str) and bool(secret) and constant_time_compare(token, secret)
        for secret in (
            raw.get(key) if isinstance(raw, dict) else None
            for key in ("WEBHOOK_SECRET", "WEBHOOK_PREVIOUS_SECRET")
        )
    ]
    return any(matches)


def masked_path(path: str, token: str) -> str:
    """``path`` with the webhook token in it replaced by ``****``."""
    return path.replace(token, "****") if token else path


def _refuse(
    request: HttpRequest,
    token: str,
    status: int,
    reason: str,
    *,
    why: str = "",
    response: HttpResponse | None = None,
) -> HttpResponse:
    """Answer ``status`` with ``{"error": reason}`` (or ``response``), logged with the token
    masked (and ``why``, which the sender is not told), never by Django with the path."""
    if response is None:
        response = JsonResponse({"error": reason}, status=status)
    logger.info(
        "Webhook %s %s %s: %s",
        request.method,
        masked_path(request.path, token),
        status,
        why or reason,
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
