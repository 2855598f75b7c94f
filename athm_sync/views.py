"""The webhook view: ATH Móvil's fast path into the reconciler.

It stores what it accepts and verifies it with ATH Móvil before anything changes (see
:mod:`athm_sync.inbox`). Answers:

- 404 when ``WEBHOOK_SECRET`` is not set (webhooks are opt-in) or the token in the URL is not it;
- 405 for any method but POST; 413 for a body over 64 KiB;
- 400 with ``{"error": reason}`` for a body that is not a JSON object of a webhook's shape;
- 200 with ``{"outcome": ..., "event": id, "duplicate": bool}`` for everything stored,
  duplicates included, even when ATH Móvil could not be asked in time (the event is then
  ``pending`` and the next run finishes it);
- 503 only when the event could not be stored at all (the database is down); once it is
  stored, any failure leaves it ``pending`` and the answer is 200.

It never answers 500, whatever the body.
"""

from __future__ import annotations

import logging

from django.core.exceptions import ImproperlyConfigured
from django.db import transaction
from django.http import Http404, HttpRequest, HttpResponseNotAllowed, JsonResponse
from django.utils.crypto import constant_time_compare
from django.views.decorators.csrf import csrf_exempt

from athm_sync import inbox
from athm_sync.conf import get_settings

logger = logging.getLogger("athm_sync.views")


@csrf_exempt
@transaction.non_atomic_requests
def webhook(request: HttpRequest, token: str) -> JsonResponse:
    """Receive one ATH Móvil webhook POSTed to ``webhook/<token>/``."""
    try:
        conf = get_settings()
    except ImproperlyConfigured as error:
        logger.error("Webhook refused: bad ATHM_SYNC setting: %s", error)
        raise Http404 from None
    if not conf.webhook_secret or not constant_time_compare(token, conf.webhook_secret):
        raise Http404
    if request.method != "POST":
        return HttpResponseNotAllowed(["POST"])
    try:
        body = _read_limited(request)
    except OSError:  # the sender hung up mid-body (Django's UnreadablePostError)
        return _error(400, "the body could not be read")
    if body is None:
        return _error(413, f"the body is over {inbox.MAX_BODY_BYTES // 1024} KiB")
    try:
        notice = inbox.parse(inbox.read_body(body))
    except inbox.InvalidWebhook as error:
        logger.info("Webhook refused: %s", error)
        return _error(400, str(error))
    try:
        event, duplicate = inbox.receive(notice, request.META.get("REMOTE_ADDR"), conf=conf)
    except Exception:  # not stored (the database is down): ATH Móvil may send it again
        logger.exception("Webhook %s could not be stored", notice.idempotency_key)
        return _error(503, "the event could not be stored; send it again later")
    return JsonResponse({"outcome": event.outcome, "event": event.pk, "duplicate": duplicate})


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
