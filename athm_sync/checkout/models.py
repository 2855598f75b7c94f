"""The checkout's own state beside a payment: the secret of its pages, the order it pays, the
phone the push went to, and when the status endpoint last asked ATH Móvil.

Kept in a model of its own (one-to-one with :class:`~athm_sync.models.Payment`) so that the
payment stays as the reconciler knows it: nothing here is a status. A row exists a moment
before its payment (``payment`` empty): it is the reservation that makes two concurrent
``start()`` calls for one order create one payment (a unique index on the order's open row).
"""

from __future__ import annotations

import secrets
import uuid

from django.db import models
from django.db.models import Q
from django.utils import timezone
from django.utils.translation import gettext_lazy as _

from athm_sync.fields import AwareDateTimeField


def new_token() -> str:
    """An unguessable secret for a checkout's URLs (256 bits)."""
    return secrets.token_urlsafe(32)


class Checkout(models.Model):
    """One customer's server-side checkout of one payment (:mod:`athm_sync.checkout`)."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    payment = models.OneToOneField(
        "athm_sync.Payment",
        verbose_name=_("payment"),
        related_name="checkout",
        null=True,
        blank=True,
        on_delete=models.CASCADE,
    )
    # Compared in constant time, never looked up by: the row is found by its id.
    token = models.CharField(_("token"), max_length=64, default=new_token, editable=False)
    order_key = models.CharField(_("order key"), max_length=100)
    # True while this row is the order's checkout that can still be paid (or was paid): at
    # most one per order key, which is what makes a double submit find the first payment.
    order_open = models.BooleanField(_("open for its order"), default=True)
    phone_number = models.CharField(_("phone the push went to"), max_length=20, blank=True)
    phone_changes = models.PositiveIntegerField(_("phone changes"), default=0)
    success_url = models.CharField(_("success URL"), max_length=2000)
    cancel_url = models.CharField(_("cancel URL"), max_length=2000, blank=True)
    # The last time a page or the status endpoint asked ATH Móvil (one asker per interval).
    asked_at = AwareDateTimeField(_("ATH Móvil last asked at"), null=True, blank=True)
    created_at = AwareDateTimeField(_("created at"), default=timezone.now)

    class Meta:
        verbose_name = _("ATH Móvil checkout")
        verbose_name_plural = _("ATH Móvil checkouts")
        constraints = [
            models.UniqueConstraint(
                fields=["order_key"],
                condition=Q(order_open=True),
                name="athm_checkout_one_open_per_order",
            )
        ]

    def __str__(self) -> str:
        return f"ATH Móvil checkout of order {self.order_key} ({self.payment_id or 'starting'})"
