"""The stored ATH Móvil payments and refunds.

Field names follow the django-athm package (``ecommerce_id``, ``reference_number``,
``metadata_1``, ``total_refunded_amount``...), so the signal receivers shops already wrote keep
working. The fields after ``updated_at`` belong to the reconciler: when to check a payment next,
how often it was checked, and the claim lease that lets overlapping runs split the work.
"""

from __future__ import annotations

import base64
from datetime import timedelta
from decimal import Decimal

from django.core.serializers.json import DjangoJSONEncoder
from django.core.validators import RegexValidator
from django.db import models
from django.db.models import Q
from django.utils import timezone
from django.utils.translation import gettext_lazy as _

from athm_sync.fields import AwareDateTimeField, DatabaseNow
from athm_sync.managers import PaymentManager

_ZERO = Decimal("0.00")


class MoneyField(models.DecimalField):
    """A two-place decimal amount that refuses ``float``: a binary float cannot hold most cent
    amounts exactly, so saving one (``payment.total = 12.5``) raises ``ValueError`` on every
    path that writes: ``save()``, ``create()``, ``bulk_create()``, ``update()``, the admin."""

    def __init__(self, *args, **kwargs) -> None:
        kwargs.setdefault("max_digits", 10)
        kwargs.setdefault("decimal_places", 2)
        super().__init__(*args, **kwargs)

    def get_db_prep_save(self, value, connection):
        if isinstance(value, float):
            raise ValueError(
                f"{self.model.__name__}.{self.name} must be a Decimal, not the float {value!r}: "
                f'use Decimal("{value}") so no cents are lost.'
            )
        return super().get_db_prep_save(value, connection)


def fit_to_column(model: type[models.Model], name: str, value: str) -> str:
    """``value`` cut to the ``max_length`` of ``model``'s field ``name``.

    Only for descriptive text (a name, an e-mail, stored metadata of a held payment): a key
    that does not fit (a reference number) is an error, never cut, since a cut key would point
    at another transaction.
    """
    return value[: model._meta.get_field(name).max_length]


def _money(verbose_name: str, **kwargs) -> MoneyField:
    # db_default too: a row inserted outside the ORM (raw SQL) gets the same zero.
    return MoneyField(verbose_name, default=_ZERO, db_default=_ZERO, **kwargs)


def _text(verbose_name: str, max_length: int, **kwargs) -> models.CharField:
    return models.CharField(
        verbose_name, max_length=max_length, blank=True, default="", db_default="", **kwargs
    )


class Payment(models.Model):
    """One ATH Móvil eCommerce payment, keyed by the ``ecommerceId`` ATH Móvil gave it.

    However a row gets into the table (``track``, ``create``, ``bulk_create``, a data
    migration, a raw SQL ``INSERT`` naming only ``ecommerce_id`` and ``total``), every column
    has a default in Python and in the database, and an OPEN or CONFIRM row is due at once.
    """

    class Status(models.TextChoices):
        OPEN = "OPEN", _("Open")
        CONFIRM = "CONFIRM", _("Confirmed")
        COMPLETED = "COMPLETED", _("Completed")
        CANCEL = "CANCEL", _("Cancelled")
        EXPIRED = "EXPIRED", _("Expired")
        # ATH Móvil completed it, but not for what the shop stored: never COMPLETED by itself.
        MISMATCHED = "MISMATCHED", _("Held: does not match")

    # A terminal payment never changes status again (a COMPLETED one can still be refunded).
    TERMINAL_STATUSES = (Status.COMPLETED, Status.CANCEL, Status.EXPIRED, Status.MISMATCHED)
    ACTIVE_STATUSES = (Status.OPEN, Status.CONFIRM)

    ecommerce_id = models.UUIDField(_("eCommerce ID"), primary_key=True, editable=False)
    status = models.CharField(
        _("status"),
        max_length=16,
        choices=Status.choices,
        default=Status.OPEN,
        db_default=Status.OPEN,
    )

    total = _money(_("total"))
    subtotal = _money(_("subtotal"))
    tax = _money(_("tax"))
    fee = _money(_("fee"))
    net_amount = _money(_("net amount"))
    total_refunded_amount = _money(_("total refunded amount"))

    reference_number = _text(_("reference number"), 100)
    daily_transaction_id = _text(_("daily transaction ID"), 32)
    metadata_1 = _text(_("metadata 1"), 40)
    metadata_2 = _text(_("metadata 2"), 40)
    customer_name = _text(_("customer name"), 255)
    customer_phone = _text(
        _("customer phone"), 20, validators=[RegexValidator(r"^\d*$", _("Digits only."))]
    )
    customer_email = models.EmailField(
        _("customer email"), max_length=254, blank=True, default="", db_default=""
    )
    business_name = _text(_("business name"), 255)
    items = models.JSONField(
        _("items"), default=list, db_default=[], blank=True, encoder=DjangoJSONEncoder
    )

    transaction_date = AwareDateTimeField(_("transaction date"), null=True, blank=True)
    # Not auto_now_add: a tracked payment carries the creation time the button reported.
    created_at = AwareDateTimeField(_("created at"), default=timezone.now, db_default=DatabaseNow())
    updated_at = AwareDateTimeField(_("updated at"), auto_now=True, db_default=DatabaseNow())

    # What the reconciler needs.
    timeout = models.PositiveIntegerField(
        _("timeout (seconds)"),
        default=600,
        db_default=600,
        help_text=_("Seconds ATH Móvil waits (120-600)."),
    )
    expires_at = AwareDateTimeField(
        _("expires at"),
        null=True,
        blank=True,
        help_text=_("created_at + timeout; derived from them when empty."),
    )
    # Never empty: a new row is due at once, however it was inserted. Only OPEN and CONFIRM
    # rows that are not given up are read (the partial index); for the others it is unused.
    next_check_at = AwareDateTimeField(
        _("next check at"), default=timezone.now, db_default=DatabaseNow()
    )
    given_up_at = AwareDateTimeField(
        _("given up at"),
        null=True,
        blank=True,
        help_text=_("Set when the payment was still open after MAX_AGE; no longer checked."),
    )
    check_count = models.PositiveIntegerField(_("check count"), default=0, db_default=0)
    # Checks in a row that failed (API or database); each one doubles the wait before the next.
    failures = models.PositiveIntegerField(_("failures in a row"), default=0, db_default=0)
    last_checked_at = AwareDateTimeField(_("last checked at"), null=True, blank=True)
    last_error = models.TextField(_("last error"), blank=True, default="", db_default="")
    claimed_until = AwareDateTimeField(_("claimed until"), null=True, blank=True)
    claimed_by = _text(_("claimed by"), 200)
    # The JWT from create-payment, needed to capture a CONFIRM payment. Cleared by save() once
    # the payment is terminal; a check constraint refuses a terminal row that still holds one.
    auth_token = models.TextField(
        _("auth token"), blank=True, editable=False, default="", db_default=""
    )

    # What ATH Móvil reported for a payment held as MISMATCHED (or confirmed for other amounts,
    # and so never captured), beside what the shop stored.
    remote_total = MoneyField(_("total ATH Móvil reported"), null=True, blank=True)
    remote_metadata_1 = _text(_("metadata 1 ATH Móvil reported"), 40)
    remote_metadata_2 = _text(_("metadata 2 ATH Móvil reported"), 40)
    mismatch_reason = models.TextField(_("mismatch reason"), blank=True, default="", db_default="")

    objects = PaymentManager()

    class Meta:
        verbose_name = _("ATH Móvil payment")
        verbose_name_plural = _("ATH Móvil payments")
        get_latest_by = "created_at"
        permissions = [("refund_payment", _("Can refund ATH Móvil payments"))]
        indexes = [
            # "Which payments are due for a check" reads only active rows through this index,
            # in the order a claim takes them (most overdue first, then by id), so a claim of a
            # batch reads that batch, not every due row, and sorts nothing.
            models.Index(
                fields=["next_check_at", "ecommerce_id"],
                condition=Q(status__in=["OPEN", "CONFIRM"]) & Q(given_up_at__isnull=True),
                name="athm_payment_due_idx",
            ),
            models.Index(fields=["reference_number"], name="athm_payment_reference_idx"),
            # --health counts the payments given up lately; they are few.
            models.Index(
                fields=["given_up_at"],
                condition=Q(given_up_at__isnull=False),
                name="athm_payment_given_up_idx",
            ),
            models.Index(fields=["metadata_1"], name="athm_payment_metadata_1_idx"),
            # Monitoring counts the held payments at every scrape; they are few.
            models.Index(
                fields=["updated_at"],
                condition=Q(status__in=["MISMATCHED"]),
                name="athm_payment_held_idx",
            ),
        ]
        constraints = [
            models.CheckConstraint(
                condition=Q(
                    status__in=["OPEN", "CONFIRM", "COMPLETED", "CANCEL", "EXPIRED", "MISMATCHED"]
                ),
                name="athm_payment_status_valid",
            ),
            models.CheckConstraint(
                condition=Q(status__in=["OPEN", "CONFIRM"]) | Q(auth_token=""),
                name="athm_payment_no_token_when_terminal",
            ),
        ]

    def __str__(self) -> str:
        return f"ATH Móvil payment {self.ecommerce_id} {self.status} ${self.total}"

    def save(self, *args, **kwargs) -> None:
        """Fills ``expires_at`` when missing and drops the auth token of a terminal payment.

        With ``update_fields``, the fields changed here are added to the update.
        """
        changed = []
        if self.expires_at is None and self.created_at is not None:
            self.expires_at = self.compute_expires_at()
            changed.append("expires_at")
        if self.clear_auth_token():
            changed.append("auth_token")
        update_fields = kwargs.get("update_fields")
        if update_fields is not None and changed:
            kwargs["update_fields"] = {*update_fields, *changed}
        super().save(*args, **kwargs)

    @property
    def is_terminal(self) -> bool:
        return self.status in self.TERMINAL_STATUSES

    @property
    def is_held(self) -> bool:
        """ATH Móvil completed it for another amount or other metadata than the shop stored."""
        return self.status == self.Status.MISMATCHED

    @property
    def deadline(self):
        """When ATH Móvil expires the payment: ``expires_at``, or ``created_at + timeout`` for a
        row stored without it (``bulk_create``, raw SQL)."""
        return self.expires_at or self.compute_expires_at()

    def compute_expires_at(self):
        return self.created_at + timedelta(seconds=self.timeout)

    def clear_auth_token(self) -> bool:
        """Forget the auth token if the payment is terminal; True when it held one."""
        if self.is_terminal and self.auth_token:
            self.auth_token = ""
            return True
        return False


class Refund(models.Model):
    """A refund of a completed payment, found in ATH Móvil's totals or refund webhooks."""

    payment = models.ForeignKey(
        Payment,
        verbose_name=_("payment"),
        related_name="refunds",
        on_delete=models.PROTECT,
    )
    amount = MoneyField(_("amount"))
    # Not unique: ATH Móvil reuses the payment's reference number for its refunds.
    reference_number = models.CharField(_("reference number"), max_length=100, blank=True)
    daily_transaction_id = models.CharField(_("daily transaction ID"), max_length=32, blank=True)
    message = models.CharField(_("message"), max_length=255, blank=True)
    transaction_date = AwareDateTimeField(_("transaction date"), null=True, blank=True)
    created_at = AwareDateTimeField(_("created at"), default=timezone.now)

    class Meta:
        verbose_name = _("ATH Móvil refund")
        verbose_name_plural = _("ATH Móvil refunds")
        ordering = ("transaction_date", "created_at", "id")
        indexes = [models.Index(fields=["reference_number"], name="athm_refund_reference_idx")]

    def __str__(self) -> str:
        return f"ATH Móvil refund ${self.amount} of payment {self.payment_id}"


class PaymentEvent(models.Model):
    """A transition, written in the same transaction as the change it records (the outbox).

    Its signal is sent after that transaction commits, in a transaction of its own that also
    sets ``dispatched_at`` and holds what the receivers write. A run finds events a crash left
    undispatched and sends them then, so no signal is lost.
    """

    class Kind(models.TextChoices):
        COMPLETED = "completed", _("Payment completed")
        CANCELLED = "cancelled", _("Payment cancelled")
        EXPIRED = "expired", _("Payment expired")
        REFUND_SENT = "refund_sent", _("Refund sent")
        MISMATCHED = "mismatched", _("Payment held: does not match")

    payment = models.ForeignKey(
        Payment, verbose_name=_("payment"), related_name="events", on_delete=models.CASCADE
    )
    refund = models.ForeignKey(
        Refund,
        verbose_name=_("refund"),
        related_name="events",
        null=True,
        blank=True,
        on_delete=models.CASCADE,
    )
    kind = models.CharField(_("kind"), max_length=16, choices=Kind.choices)
    from_status = models.CharField(_("from status"), max_length=16, blank=True)
    to_status = models.CharField(_("to status"), max_length=16, blank=True)
    source = models.CharField(
        _("source"), max_length=32, blank=True, help_text=_("What saw it: poll, webhook...")
    )
    created_at = AwareDateTimeField(_("created at"), default=timezone.now)
    dispatched_at = AwareDateTimeField(_("dispatched at"), null=True, blank=True)
    # Receivers that raised and have not been delivered since (still retried, or given up):
    # each has a ReceiverDelivery; a retry that succeeds takes one off.
    receiver_errors = models.PositiveIntegerField(_("receiver errors"), default=0)
    # Each receiver that raised when the signal was first sent: {"receiver": ..., "error": ...,
    # "traceback": ...} (no "traceback" in events recorded before migration 0013).
    errors = models.JSONField(_("receiver errors, in full"), default=list, blank=True)

    class Meta:
        verbose_name = _("ATH Móvil payment event")
        verbose_name_plural = _("ATH Móvil payment events")
        ordering = ("created_at", "id")
        indexes = [
            # Undispatched events are few; the sweep reads only them.
            models.Index(
                fields=["created_at"],
                condition=Q(dispatched_at__isnull=True),
                name="athm_event_pending_idx",
            ),
            # Pruning old history reads the oldest rows first, through these.
            models.Index(fields=["created_at"], name="athm_event_created_idx"),
        ]

    def __str__(self) -> str:
        return f"{self.get_kind_display()} ({self.payment_id})"


class ReceiverDelivery(models.Model):
    """One receiver of an event's signal that raised, and its retries (``athm_sync.outbox``).

    Written in the transaction that sent the signal, so a failure is never lost. The receiver
    is named by its dotted path (``module.qualname``) and found again among the signal's live
    receivers at each retry; only it is called again, never the receivers that succeeded.
    Outstanding while neither ``delivered_at`` nor ``given_up_at`` is set; due at
    ``next_attempt_at``. A given-up one needs a person until it is delivered (``--redeliver``)
    or ``acknowledged_at`` is set (the admin's "Acknowledge", ``--acknowledge``): until then
    every run lists it and ``--health`` is unhealthy.
    """

    event = models.ForeignKey(
        PaymentEvent,
        verbose_name=_("event"),
        related_name="receiver_deliveries",
        on_delete=models.CASCADE,
    )
    receiver = models.CharField(_("receiver"), max_length=500)
    # Calls that raised: the first send, then each retry that failed.
    attempts = models.PositiveIntegerField(_("failed attempts"), default=1)
    first_failed_at = AwareDateTimeField(_("first failed at"))
    last_failed_at = AwareDateTimeField(_("last failed at"))
    next_attempt_at = AwareDateTimeField(_("next attempt at"), null=True, blank=True)
    last_error = models.TextField(_("last error"), blank=True, default="")
    # The last failure's traceback, bounded and with secrets masked (athm_sync.tracebacks).
    last_traceback = models.TextField(_("last traceback"), blank=True, default="", db_default="")
    delivered_at = AwareDateTimeField(_("delivered at"), null=True, blank=True)
    given_up_at = AwareDateTimeField(_("given up at"), null=True, blank=True)
    # A person saw it given up and settled it by hand: no run lists it, --health ignores it.
    acknowledged_at = AwareDateTimeField(_("acknowledged at"), null=True, blank=True)

    class Meta:
        verbose_name = _("ATH Móvil failed receiver")
        verbose_name_plural = _("ATH Móvil failed receivers")
        ordering = ("-first_failed_at", "-id")
        constraints = [
            models.UniqueConstraint(fields=["event", "receiver"], name="athm_delivery_unique"),
        ]
        indexes = [
            # Each run reads only the failing ones that are due, most overdue first.
            models.Index(
                fields=["next_attempt_at", "id"],
                condition=Q(delivered_at__isnull=True, given_up_at__isnull=True),
                name="athm_delivery_due_idx",
            ),
            # --health counts the ones given up lately; they are few.
            models.Index(
                fields=["given_up_at"],
                condition=Q(given_up_at__isnull=False),
                name="athm_delivery_given_up_idx",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.receiver} for event {self.event_id} ({self.state})"

    @property
    def state(self) -> str:
        """``delivered``, ``acknowledged`` (given up, settled by a person), ``given up`` or
        ``failing``."""
        if self.delivered_at is not None:
            return "delivered"
        if self.given_up_at is None:
            return "failing"
        return "acknowledged" if self.acknowledged_at is not None else "given up"


class SyncRun(models.Model):
    """One run of ``manage.py athm_sync`` (dry runs are not recorded)."""

    started_at = AwareDateTimeField(_("started at"), default=timezone.now)
    finished_at = AwareDateTimeField(_("finished at"), null=True, blank=True)
    host = models.CharField(_("host"), max_length=255, blank=True)
    pid = models.PositiveIntegerField(_("process ID"), null=True, blank=True)
    options = models.JSONField(_("options"), default=dict, blank=True, encoder=DjangoJSONEncoder)
    checked = models.PositiveIntegerField(_("checked"), default=0)
    unchanged = models.PositiveIntegerField(_("unchanged"), default=0)
    transitions = models.JSONField(_("transitions"), default=dict, blank=True)
    signals_sent = models.PositiveIntegerField(_("signals sent"), default=0)
    receiver_errors = models.PositiveIntegerField(_("receiver errors"), default=0)
    errors = models.JSONField(_("errors"), default=list, blank=True, encoder=DjangoJSONEncoder)
    exit_code = models.SmallIntegerField(_("exit code"), null=True, blank=True)
    # The run's calls to ATH Móvil by endpoint: {"findPayment": {"calls": n, "retries": n,
    # "failures": {"timeout": n}}} (athm_sync.calls), added up by athm_sync.monitoring.
    calls = models.JSONField(_("ATH Móvil calls"), default=dict, blank=True)
    # Renewed while the run lives (with its claims); a run that never finished and stopped
    # renewing is closed by the next run as abandoned.
    alive_until = AwareDateTimeField(_("alive until"), null=True, blank=True)

    class Meta:
        verbose_name = _("ATH Móvil sync run")
        verbose_name_plural = _("ATH Móvil sync runs")
        ordering = ("-started_at", "-id")
        get_latest_by = "started_at"
        indexes = [
            models.Index(fields=["started_at"], name="athm_run_started_idx"),
            # The runs not finished: each run looks for abandoned ones, however long the history.
            models.Index(
                fields=["started_at"],
                name="athm_run_unfinished_idx",
                condition=models.Q(finished_at__isnull=True),
            ),
        ]

    def __str__(self) -> str:
        return f"athm_sync run {self.started_at:%Y-%m-%d %H:%M:%S} (exit {self.exit_code})"


class WebhookEvent(models.Model):
    """One webhook body the view accepted (the inbox), and what came of it.

    ``body`` is the body byte for byte as it arrived (see :meth:`body_bytes`); ``payload`` is
    that body parsed (a JSON value: ``9.00`` reads back ``9.0``, spacing is gone and
    PostgreSQL's ``jsonb`` reorders the keys); the other fields are its normalised reading.
    ``idempotency_key`` is unique: a second delivery of the same event finds this row and
    changes nothing more (the first delivery's body is the one kept).
    """

    class Outcome(models.TextChoices):
        PENDING = "pending", _("Pending: not verified yet")
        APPLIED = "applied", _("Applied")
        UNCHANGED = "unchanged", _("No change")
        REJECTED = "rejected", _("Rejected: ATH Móvil says otherwise")
        IGNORED = "ignored", _("Ignored")

    class BodyEncoding(models.TextChoices):
        # A UTF-8 body is kept as the text it is; any other bytes (a JSON body in UTF-16 or
        # UTF-32, which Python's json reads too) as base64, since a text column cannot hold
        # them (NUL bytes, no valid decoding) and nothing may be lost.
        UTF8 = "utf-8", _("UTF-8 text")
        BASE64 = "base64", _("base64 of the bytes (not UTF-8)")

    received_at = AwareDateTimeField(_("received at"), default=timezone.now)
    remote_addr = models.GenericIPAddressField(_("remote address"), null=True, blank=True)
    payload = models.JSONField(_("payload"), encoder=DjangoJSONEncoder)
    # Empty for events stored before bodies were kept (migration 0012).
    body = models.TextField(_("body, as received"), blank=True, default="", db_default="")
    body_encoding = models.CharField(
        _("body encoding"),
        max_length=8,
        choices=BodyEncoding.choices,
        default=BodyEncoding.UTF8,
        db_default=BodyEncoding.UTF8,
    )
    transaction_type = models.CharField(_("transaction type"), max_length=16)
    status = models.CharField(_("status"), max_length=16, blank=True)
    ecommerce_id = models.UUIDField(_("eCommerce ID"), null=True, blank=True)
    reference_number = models.CharField(_("reference number"), max_length=100, blank=True)
    amount = MoneyField(_("amount"), null=True, blank=True)
    idempotency_key = models.CharField(_("idempotency key"), max_length=200, unique=True)
    outcome = models.CharField(
        _("outcome"), max_length=16, choices=Outcome.choices, default=Outcome.PENDING
    )
    reason = models.TextField(_("reason"), blank=True)
    payment = models.ForeignKey(
        Payment,
        verbose_name=_("payment"),
        related_name="webhook_events",
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
    )
    deliveries = models.PositiveIntegerField(_("deliveries"), default=1)
    attempts = models.PositiveIntegerField(_("verification attempts"), default=0)
    processed_at = AwareDateTimeField(_("processed at"), null=True, blank=True)
    # Held while one process verifies the event, so a duplicate arriving meanwhile waits out.
    processing_until = AwareDateTimeField(_("processing until"), null=True, blank=True)
    # A pending event that could not be verified or applied waits until then (backoff), so it
    # never holds up the events behind it. Empty: as soon as possible.
    next_attempt_at = AwareDateTimeField(_("next attempt at"), null=True, blank=True)

    class Meta:
        verbose_name = _("ATH Móvil webhook event")
        verbose_name_plural = _("ATH Móvil webhook events")
        ordering = ("-received_at", "-id")
        indexes = [
            # The run reads only pending events, oldest first, through this index.
            models.Index(
                fields=["received_at"],
                condition=Q(outcome="pending"),
                name="athm_webhook_pending_idx",
            ),
            models.Index(fields=["ecommerce_id"], name="athm_webhook_ecommerce_idx"),
            models.Index(fields=["received_at"], name="athm_webhook_received_idx"),
        ]

    def __str__(self) -> str:
        subject = self.ecommerce_id or self.reference_number or "-"
        return f"{self.transaction_type} {self.status} webhook ({subject}): {self.outcome}"

    def body_bytes(self) -> bytes:
        """The body exactly as it was received (``b""`` for an event stored before bodies
        were kept)."""
        if self.body_encoding == self.BodyEncoding.BASE64:
            return base64.b64decode(self.body)
        return self.body.encode("utf-8")


class ReportScan(models.Model):
    """Where a scan of the transaction report stands: when a run may scan next, and what the
    last scan read. One row per kind of scan (``refunds``)."""

    name = models.CharField(_("name"), max_length=32, unique=True)
    next_scan_at = AwareDateTimeField(_("next scan at"), default=timezone.now)
    scanned_from = AwareDateTimeField(_("last scanned from"), null=True, blank=True)
    scanned_to = AwareDateTimeField(_("last scanned to"), null=True, blank=True)
    rows = models.PositiveIntegerField(_("rows read"), default=0)
    refunds = models.PositiveIntegerField(_("refunds found"), default=0)
    last_error = models.TextField(_("last error"), blank=True)

    class Meta:
        verbose_name = _("ATH Móvil report scan")
        verbose_name_plural = _("ATH Móvil report scans")

    def __str__(self) -> str:
        return f"{self.name} scan (next at {self.next_scan_at:%Y-%m-%d %H:%M:%S})"


class RunLock(models.Model):
    """A named lease that one holder at a time may take, across processes and hosts.

    A holder takes it with one conditional ``UPDATE`` (free or expired rows only), renews it
    while it works and frees it when done; a holder that dies (SIGKILL, its host gone) leaves
    it until ``expires_at``. Used by the task-queue integrations (``athm_sync.locks``) so that
    at most one scheduled run goes at a time; overlapping runs would be safe, only wasteful.
    """

    name = models.CharField(_("name"), max_length=64, unique=True)
    holder = models.CharField(_("held by"), max_length=255, blank=True, default="")
    acquired_at = AwareDateTimeField(_("acquired at"), null=True, blank=True)
    expires_at = AwareDateTimeField(_("expires at"), null=True, blank=True)

    class Meta:
        verbose_name = _("ATH Móvil run lock")
        verbose_name_plural = _("ATH Móvil run locks")

    def __str__(self) -> str:
        if not self.holder:
            return f"{self.name} (free)"
        return f"{self.name} (held by {self.holder} until {self.expires_at:%Y-%m-%d %H:%M:%S})"


class RefundIntent(models.Model):
    """A refund the shop is sending: reserved (committed) before the refund API is called and
    deleted once ATH Móvil's answer is recorded. At most one per payment, so a second refund
    of the payment started meanwhile is refused instead of sent.

    One left behind (the process died, or the answer was lost and ATH Móvil did not show the
    refund yet) is settled by reading the payment's refunded amount, never by calling the
    refund API again (:func:`athm_sync.refunds.settle_intents`).
    """

    payment = models.OneToOneField(
        Payment,
        verbose_name=_("payment"),
        related_name="refund_intent",
        on_delete=models.CASCADE,
    )
    amount = MoneyField(_("amount"))
    message = models.CharField(_("message"), max_length=50, blank=True)
    # The payment's total_refunded_amount when the intent was reserved.
    refunded_before = MoneyField(_("refunded before"))
    created_at = AwareDateTimeField(_("created at"), default=timezone.now)
    # Until then the process that reserved it may still be waiting for ATH Móvil's answer.
    busy_until = AwareDateTimeField(_("in flight until"))
    note = models.CharField(_("note"), max_length=255, blank=True)

    class Meta:
        verbose_name = _("ATH Móvil refund being sent")
        verbose_name_plural = _("ATH Móvil refunds being sent")

    def __str__(self) -> str:
        return f"refund of ${self.amount} of payment {self.payment_id} being sent"


class UnmatchedRefund(models.Model):
    """A refund ATH Móvil reported (a report row, a refund webhook) that no stored payment
    could be linked to, neither by its reference number nor by the customer's phone, the
    amount and the date: listed for a person, never dropped in silence."""

    # The refund's own record: its date and daily id name it (one business, one day, one id).
    key = models.CharField(_("key"), max_length=200, unique=True)
    source = models.CharField(_("seen in"), max_length=16)
    reference_number = models.CharField(_("reference number"), max_length=100, blank=True)
    daily_transaction_id = models.CharField(_("daily transaction ID"), max_length=32, blank=True)
    transaction_date = AwareDateTimeField(_("transaction date"), null=True, blank=True)
    amount = MoneyField(_("amount"))
    customer_name = models.CharField(_("customer name"), max_length=255, blank=True)
    customer_phone = models.CharField(_("customer phone"), max_length=20, blank=True)
    message = models.CharField(_("message"), max_length=255, blank=True)
    reason = models.TextField(_("why it is unmatched"), blank=True)
    first_seen_at = AwareDateTimeField(_("first seen at"), default=timezone.now)
    last_seen_at = AwareDateTimeField(_("last seen at"), default=timezone.now)
    times_seen = models.PositiveIntegerField(_("times seen"), default=1)

    class Meta:
        verbose_name = _("ATH Móvil refund matching no payment")
        verbose_name_plural = _("ATH Móvil refunds matching no payment")
        ordering = ("-first_seen_at", "-id")

    def __str__(self) -> str:
        return f"unmatched refund ${self.amount} ({self.reference_number or '-'})"


# The checkout's model lives beside its code; imported here so Django registers it with the app.
from athm_sync.checkout.models import Checkout  # noqa: E402, F401
