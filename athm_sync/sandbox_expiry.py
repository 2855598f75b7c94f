"""Expiring a payment in the sandbox the way the shop sees it: both deadlines pass at once.

ATH Móvil cannot tell a cancelled payment from an expired one (findPayment says CANCEL for
both) and its answers carry no creation time, so the shop tells them apart by its own clock
and its own ``created_at + timeout`` (:func:`athm_sync.reconcile.decide`): a CANCEL before
that deadline is a cancellation. The sandbox's ``expire`` lets a payment's time run out there
(its creation moves back by the time it had left); for the shop to see an expiry, and not a
cancellation, the stored payment's deadline must pass too. This module does that part:

- :func:`move_deadline_to_now` ages a stored payment so that its deadline is now, and makes
  it due for a check. It is the sandbox's expiry listener for a shop in the same process
  (``sandbox.state.add_expiry_listener(move_deadline_to_now)``: the ``athm_settings`` test
  fixture and ``scripts/demo`` connect it), so ``sandbox.expire(id)`` and ``POST
  /sandbox/payments/<id>/expire`` lead to ``payment_expired``.
- :func:`expire` does the same against a sandbox running in another process, over HTTP
  (``manage.py athm_sandbox expire``): it ages the stored payment, asks the sandbox to expire
  it, then checks it with the sandbox as ``sync_payment`` does.

For development only: :func:`expire` refuses unless ``API_BASE_URL`` is on this machine.
Nothing here changes a payment's status; the reconciler does, through its usual doors.
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

import requests
from django.db import connection, transaction

from athm_sync import clock
from athm_sync.conf import LOOPBACK_HOSTS, get_settings
from athm_sync.database import run_locked
from athm_sync.managers import validate_ecommerce_id
from athm_sync.models import Payment
from athm_sync.reconcile import Outcome, check_payment

logger = logging.getLogger("athm_sync.sandbox_expiry")

# The sandbox posts the expiry's webhooks (5 s each at most) before it answers the control call.
CONTROL_TIMEOUT = (3.0, 30.0)


class ExpiryRefused(ValueError):
    """This payment cannot be expired (not stored, not open, unknown to the sandbox); the
    message is one line for a person, and nothing was changed."""


class SandboxUnavailable(Exception):
    """No sandbox to expire payments in: ``API_BASE_URL`` is not on this machine, or the
    sandbox there cannot be reached or does not answer as the sandbox does."""


@dataclass(frozen=True)
class Aged:
    """A stored payment :func:`age` moved: its creation and deadline before, and by how much."""

    ecommerce_id: uuid.UUID
    created_at: datetime
    expires_at: datetime
    moved_by: timedelta


def age(ecommerce_id: uuid.UUID, now: datetime | None = None) -> Aged | None:
    """Move a stored OPEN or CONFIRM payment's ``created_at`` and ``expires_at`` back by the
    time it had left, so that its deadline is ``now``, and make it due now; ``None`` (nothing
    changed) when it is not stored or is terminal.

    Its claim is released too, so that a run which claimed it before does not write the old
    deadline back (a run writes only the rows it still holds).
    """
    now = now or clock.now()

    def move() -> Aged | None:
        with transaction.atomic():
            payment = Payment.objects.select_for_update().filter(pk=ecommerce_id).first()
            if payment is None or payment.is_terminal:
                return None
            aged = Aged(
                payment.pk,
                payment.created_at,
                payment.deadline,
                max(timedelta(0), payment.deadline - now),
            )
            payment.created_at = aged.created_at - aged.moved_by
            payment.expires_at = aged.expires_at - aged.moved_by
            payment.next_check_at = min(payment.next_check_at, now)
            payment.claimed_by, payment.claimed_until = "", None
            payment.save(
                update_fields=[
                    "created_at",
                    "expires_at",
                    "next_check_at",
                    "claimed_by",
                    "claimed_until",
                    "updated_at",
                ]
            )
            return aged

    aged = run_locked(move)
    if aged is not None:
        logger.info(
            "Payment %s aged by %.0f s for the sandbox's expiry: its deadline is now",
            aged.ecommerce_id,
            aged.moved_by.total_seconds(),
        )
    return aged


def restore(aged: Aged) -> None:
    """Put back what :func:`age` moved, unless the payment changed since (a check settled it)."""

    def put_back() -> None:
        with transaction.atomic():
            payment = Payment.objects.select_for_update().filter(pk=aged.ecommerce_id).first()
            if payment is None or payment.is_terminal:
                return
            if payment.expires_at != aged.expires_at - aged.moved_by:
                return
            payment.created_at, payment.expires_at = aged.created_at, aged.expires_at
            payment.save(update_fields=["created_at", "expires_at", "updated_at"])

    run_locked(put_back)


def move_deadline_to_now(ecommerce_id: str) -> bool:
    """The sandbox's expiry listener for a shop in its process: :func:`age` the stored payment
    the sandbox is about to expire. Returns whether a stored payment was moved.

    Called from the thread that asked the sandbox (a test, a view) or from one of the
    sandbox's own server threads; a database connection it had to open is closed again.
    """
    opened_here = connection.connection is None
    try:
        return age(validate_ecommerce_id(ecommerce_id)) is not None
    finally:
        if opened_here and not connection.in_atomic_block:
            connection.close()


def sandbox_url(api_base_url: str) -> str:
    """``API_BASE_URL`` without its trailing slash, or :class:`SandboxUnavailable` when it is
    not on this machine (ATH Móvil itself, or another host)."""
    parts = urlsplit(api_base_url.strip())
    if parts.scheme not in ("http", "https") or parts.hostname not in LOOPBACK_HOSTS:
        raise SandboxUnavailable(
            f"ATHM_SYNC['API_BASE_URL'] is {api_base_url}, not a sandbox on this machine: "
            "payments are expired only in the sandbox (127.0.0.1, localhost or ::1)"
        )
    return api_base_url.strip().rstrip("/")


def expire(ecommerce_id: Any, *, session: requests.Session | None = None) -> Outcome:
    """Let a stored payment's time run out in the sandbox at ``API_BASE_URL`` and here, then
    check it: a payment the sandbox answers CANCEL for after this shop's deadline, which the
    reconciler records as EXPIRED, sending ``payment_expired`` once.

    The stored payment is aged first (:func:`age`), so that the ``expired`` webhook the
    sandbox may post before it answers finds the deadline passed; if the sandbox then does
    not expire it, the payment is put back as it was. Returns the check's
    :class:`~athm_sync.reconcile.Outcome` (``outcome.payment`` is the fresh row). Raises
    :class:`ExpiryRefused` for a payment that cannot be expired and
    :class:`SandboxUnavailable` when there is no sandbox to ask.
    """
    base = sandbox_url(get_settings().api_base_url)
    try:
        payment_id = validate_ecommerce_id(ecommerce_id)
    except ValueError as error:
        raise ExpiryRefused(str(error)) from None
    stored = Payment.objects.filter(pk=payment_id).first()
    if stored is None:
        raise ExpiryRefused(
            f"payment {payment_id} is not stored in this shop: track it first, or expire it "
            f"in the sandbox alone (POST {base}/sandbox/payments/{payment_id}/expire)"
        )
    if stored.is_terminal:
        raise ExpiryRefused(
            f"payment {payment_id} is already {stored.status} here: only an OPEN or CONFIRM "
            "payment can expire"
        )
    own_session = session is None
    session = session or requests.Session()
    try:
        seen = _control(session, "GET", base, payment_id)
        if seen.get("status") not in Payment.ACTIVE_STATUSES:
            reason = f" ({seen['cancelReason']})" if seen.get("cancelReason") else ""
            raise ExpiryRefused(
                f"payment {payment_id} is {seen.get('status')}{reason} in the sandbox: only an "
                "OPEN or CONFIRM payment can expire"
            )
        aged = age(payment_id)
        if aged is None:
            raise ExpiryRefused(
                f"payment {payment_id} changed here meanwhile: it is no longer open"
            )
        try:
            _control(session, "POST", base, payment_id, "/expire")
        except BaseException:
            restore(aged)
            raise
    finally:
        if own_session:
            session.close()
    return check_payment(payment_id)


def _control(
    session: requests.Session, method: str, base: str, payment_id: uuid.UUID, action: str = ""
) -> dict[str, Any]:
    """One call to the sandbox's control API about a payment (``action``: "" to read it,
    "/expire"); its JSON answer, or the error it stands for."""
    path = f"/sandbox/payments/{payment_id}{action}"
    try:
        response = session.request(method, base + path, timeout=CONTROL_TIMEOUT)
    except requests.RequestException as error:
        raise SandboxUnavailable(
            f"the sandbox at {base} cannot be reached ({type(error).__name__}); start it with "
            "python -m athm_sync.sandbox, or point ATHM_SYNC['API_BASE_URL'] at it"
        ) from None
    try:
        answer = response.json()
    except ValueError:
        answer = None
    if not isinstance(answer, dict):
        raise SandboxUnavailable(
            f"{base} does not answer as the sandbox's control API does (HTTP "
            f"{response.status_code} to {method} {path})"
        )
    if response.status_code == 200:
        return answer
    if response.status_code == 404 and answer.get("errorcode") == "BTRA_0031":
        raise ExpiryRefused(f"the sandbox at {base} does not know payment {payment_id}")
    if response.status_code in (404, 405):
        raise SandboxUnavailable(
            f"{base} does not answer as the sandbox's control API does (HTTP "
            f"{response.status_code}: {answer.get('error', '')})"
        )
    raise ExpiryRefused(
        f"the sandbox did not expire payment {payment_id}: {answer.get('error', response.reason)}"
    )
