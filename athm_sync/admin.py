"""Read-only admin pages: payments, refunds and webhooks come from ATH Móvil, never from a form.

The auth token is never shown. What the admin does goes through the app's own functions, and
needs the change permission of the page's model (nothing here is edited by hand, so on these
pages that permission means "may act"; a user with the view permission only looks):
"Check now" asks ATH Móvil about the selected payments (:func:`athm_sync.sync_payment`),
"Reprocess" verifies webhook events again (:func:`athm_sync.inbox.process`), "Send again"
calls failed signal receivers again (:func:`athm_sync.outbox.redeliver`), "Acknowledge"
marks given-up ones as settled by hand (:func:`athm_sync.outbox.acknowledge`). "Refund" (the
``athm_sync.refund_payment`` permission) shows what can be refunded of the selection and why
not the rest (:func:`athm_sync.refunds.refusal`), asks for the amount on a confirmation page,
then refunds one payment through :func:`athm_sync.refunds.refund`.
"""

from __future__ import annotations

import json
import re
from decimal import Decimal
from typing import NamedTuple

from django import forms
from django.contrib import admin, messages
from django.contrib.admin import helpers
from django.contrib.admin.views.main import ChangeList
from django.contrib.auth import get_permission_codename
from django.core.exceptions import ImproperlyConfigured
from django.db.models import Q, QuerySet
from django.template.response import TemplateResponse
from django.utils.html import format_html, format_html_join
from django.utils.text import format_lazy

from athm_sync import clock
from athm_sync.models import (
    Payment,
    PaymentEvent,
    ReceiverDelivery,
    Refund,
    RefundIntent,
    SyncRun,
    UnmatchedRefund,
    WebhookEvent,
)
from athm_sync.refunds import (
    MAX_MESSAGE_LENGTH,
    RefundError,
    refund,
    refundable_amount,
    refusal,
    unavailable,
)

# "Check now" asks ATH Móvil about each selected payment while the page waits: a few at most.
# The other actions that call ATH Móvil or receivers take as many.
CHECK_NOW_LIMIT = 20


def as_spelled(label):
    """``label`` shown as written on every admin page. The admin capitalises the first letter
    of each label and column ("ECommerce ID"); a word joiner in front (U+2060: invisible, and
    without case) leaves ATH Móvil's spelling, "eCommerce ID", as it is."""
    return format_lazy("\u2060{}", label)


ECOMMERCE_ID = as_spelled(Payment._meta.get_field("ecommerce_id").verbose_name)


class _ReadOnlyMixin:
    def has_add_permission(self, request, obj=None) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False

    def has_delete_permission(self, request, obj=None) -> bool:
        return False

    def has_act_permission(self, request) -> bool:
        """May use the page's actions: the model's change permission (never used to edit)."""
        opts = self.opts
        return request.user.has_perm(f"{opts.app_label}.{get_permission_codename('change', opts)}")


# A search made only of what a phone number is written with: "(787) 555-0142", "555-0142".
_PHONE_SEARCH = re.compile(r"[\d\s()+.\-]+")
# Fewer digits than this would match too much to be a phone number searched for.
MIN_PHONE_DIGITS = 4


def phone_digits(search: str) -> str:
    """The digits of a search that looks like a phone number, as phone numbers are stored
    (digits only), without the country code 1 of an 11-digit number; ``""`` for a search that
    does not look like one."""
    if not _PHONE_SEARCH.fullmatch(search.strip() or "x"):
        return ""
    digits = re.sub(r"\D", "", search)
    if len(digits) == 11 and digits.startswith("1"):
        digits = digits[1:]
    return digits if len(digits) >= MIN_PHONE_DIGITS else ""


class _PhoneSearchMixin:
    """The search also finds the rows whose stored phone number (digits only) holds the
    digits of a search written like a phone number ("(787) 555-0142" finds 7875550142)."""

    phone_field = "customer_phone"

    def get_search_results(self, request, queryset, search_term):
        found, may_have_duplicates = super().get_search_results(request, queryset, search_term)
        digits = phone_digits(search_term)
        if digits:
            found = found | queryset.filter(Q(**{f"{self.phone_field}__contains": digits}))
        return found, may_have_duplicates


class RefundInline(_ReadOnlyMixin, admin.TabularInline):
    model = Refund
    extra = 0
    can_delete = False
    fields = ("amount", "reference_number", "daily_transaction_id", "message", "transaction_date")
    readonly_fields = fields
    show_change_link = True


HELD_SECTION = "Held: what ATH Móvil reported"


class GivenUpFilter(admin.SimpleListFilter):
    """Payments no longer checked because they stayed open past ``MAX_AGE``."""

    title = "given up"
    parameter_name = "given_up"

    def lookups(self, request, model_admin):
        return (("yes", "Given up"), ("no", "Followed"))

    def queryset(self, request, queryset):
        if self.value() == "yes":
            return queryset.filter(given_up_at__isnull=False)
        if self.value() == "no":
            return queryset.filter(given_up_at__isnull=True)
        return queryset


class RefundForm(forms.Form):
    """The confirmation page's fields; the refund itself validates everything again.

    ``refunded_so_far`` is the payment's refunded amount the page was shown with: the refund
    is refused unless it is still the payment's, so a page submitted twice (a double click, a
    reload, the back button) refunds once, even after a restart.
    """

    amount = forms.DecimalField(
        max_digits=10,
        decimal_places=2,
        min_value=Decimal("0.01"),
        required=False,
        help_text="Empty: all that is left to refund.",
    )
    message = forms.CharField(
        max_length=MAX_MESSAGE_LENGTH, required=False, help_text="Shown to the customer."
    )
    refunded_so_far = forms.DecimalField(
        max_digits=10, decimal_places=2, min_value=Decimal("0.00"), widget=forms.HiddenInput
    )


def _refunds_off() -> str | None:
    """Why no refund can be sent at all now (the settings), or ``None``."""
    from athm_sync.conf import get_settings

    try:
        return unavailable(get_settings())
    except ImproperlyConfigured as error:
        return f"the ATHM_SYNC setting cannot be used: {str(error).rstrip('.')}"


@admin.register(Payment)
class PaymentAdmin(_PhoneSearchMixin, _ReadOnlyMixin, admin.ModelAdmin):
    list_display = (
        "ecommerce_id_spelled",
        "status",
        "total",
        "remote_total",
        "total_refunded_amount",
        "reference_number",
        "customer_name",
        "metadata_1",
        "created_at",
    )
    list_filter = ("status", GivenUpFilter, "created_at")
    search_fields = (
        "reference_number",
        "metadata_1",
        "metadata_2",
        "ecommerce_id",
        "customer_name",
        "customer_phone",
        "customer_email",
    )
    search_help_text = (
        "eCommerce ID, reference number, metadata, or the customer's name, e-mail or phone "
        "number (written any way: (787) 555-0142, 555-0142)"
    )
    date_hierarchy = "created_at"
    ordering = ("-created_at",)
    exclude = ("auth_token",)
    inlines = (RefundInline,)
    fieldsets = (
        (
            None,
            {
                "fields": (
                    "ecommerce_id_spelled",
                    "status",
                    "reference_number",
                    "daily_transaction_id",
                )
            },
        ),
        (
            "Amounts",
            {"fields": ("total", "subtotal", "tax", "fee", "net_amount", "total_refunded_amount")},
        ),
        ("Shop", {"fields": ("metadata_1", "metadata_2", "items")}),
        (
            "Customer",
            {"fields": ("customer_name", "customer_phone", "customer_email", "business_name")},
        ),
        ("Dates", {"fields": ("transaction_date", "created_at", "updated_at", "expires_at")}),
        (
            HELD_SECTION,
            {
                "fields": (
                    "mismatch_reason",
                    "remote_total",
                    "remote_metadata_1",
                    "remote_metadata_2",
                ),
            },
        ),
        (
            "Sync",
            {
                "classes": ("collapse",),
                "fields": (
                    "timeout",
                    "next_check_at",
                    "given_up_at",
                    "check_count",
                    "failures",
                    "last_checked_at",
                    "last_error",
                    "claimed_until",
                    "claimed_by",
                ),
            },
        ),
    )
    readonly_fields = tuple(field for _, options in fieldsets for field in options["fields"])

    actions = ("check_now", "refund_action")

    @admin.display(description=ECOMMERCE_ID, ordering="ecommerce_id")
    def ecommerce_id_spelled(self, payment: Payment):
        return payment.ecommerce_id

    @admin.action(description="Check the selected payments with ATH Móvil now", permissions=["act"])
    def check_now(self, request, queryset):
        """Ask ATH Móvil about each selected payment, through the same path as the poll."""
        from athm_sync.client import ATHMovilError
        from athm_sync.reconcile import check_payment

        ids = list(queryset.values_list("pk", flat=True)[: CHECK_NOW_LIMIT + 1])
        if len(ids) > CHECK_NOW_LIMIT:
            self.message_user(
                request,
                f"Select at most {CHECK_NOW_LIMIT} payments; the next athm_sync run checks "
                "every payment that is due anyway.",
                messages.ERROR,
            )
            return
        changed, failed = 0, []
        for pk in ids:
            try:
                outcome = check_payment(pk, source="admin")
            except ImproperlyConfigured as error:  # nothing can be asked
                self.message_user(request, f"Not checked: {error}", messages.ERROR)
                return
            except ATHMovilError as error:  # credentials rejected: nothing else will work
                failed.append(f"{pk}: {error}")
                break
            if outcome.error:
                failed.append(f"{pk}: {outcome.error}")
            changed += bool(outcome.events)
        self.message_user(
            request,
            f"Checked {len(ids)} payment(s); {changed} changed.",
            messages.WARNING if failed else messages.SUCCESS,
        )
        for failure in failed:
            self.message_user(request, f"Not checked: {failure}", messages.ERROR)

    def has_refund_permission(self, request) -> bool:
        return request.user.has_perm("athm_sync.refund_payment")

    @admin.action(description="Refund the selected payment…", permissions=["refund"])
    def refund_action(self, request, queryset):
        """Show which of the selected payments can be refunded and why not the others; for
        one that can, ask for the amount, and refund it when that page posts back."""
        payments = list(
            queryset.select_related("refund_intent").order_by("-created_at", "pk")[
                : CHECK_NOW_LIMIT + 1
            ]
        )
        if len(payments) > CHECK_NOW_LIMIT:
            self.message_user(
                request,
                f"Select at most {CHECK_NOW_LIMIT} payments; each is refunded on its own page.",
                messages.ERROR,
            )
            return None
        form = None
        if "confirm" in request.POST and len(payments) == 1:
            form = RefundForm(request.POST)
            if form.is_valid():
                self._refund(request, payments[0], form)
                return None
        off = _refunds_off()
        now = clock.now()
        refused, refundable = [], []
        for payment in payments:
            reason = refusal(payment, now=now) or (off and "no refund can be sent now (see above)")
            if reason is None:
                refundable.append((payment, refundable_amount(payment)))
            else:
                refused.append((payment, reason))
        single = refundable[0][0] if len(refundable) == 1 else None
        if single is not None and form is None:
            form = RefundForm(initial={"refunded_so_far": single.total_refunded_amount})
        context = {
            **self.admin_site.each_context(request),
            "title": "Refund an ATH Móvil payment",
            "opts": self.model._meta,
            "off": off,
            "payment": single,
            "refundable": refundable,
            "refused": refused,
            "form": form if single is not None else None,
            "action_checkbox_name": helpers.ACTION_CHECKBOX_NAME,
        }
        return TemplateResponse(request, "admin/athm_sync/payment/refund.html", context)

    def _refund(self, request, payment: Payment, form: RefundForm) -> None:
        """Refund ``payment`` as the confirmation page asked, and say what came of it."""
        try:
            made = refund(
                payment,
                form.cleaned_data["amount"],
                form.cleaned_data["message"],
                refunded_so_far=form.cleaned_data["refunded_so_far"],
            )
        except (RefundError, ImproperlyConfigured) as error:
            self.message_user(request, f"Not refunded: {error}", messages.ERROR)
        else:
            self.message_user(
                request, f"Refunded ${made.amount} of payment {payment.pk}.", messages.SUCCESS
            )

    def get_fieldsets(self, request, obj=None):
        """The "Held" section only for a payment that is held."""
        fieldsets = super().get_fieldsets(request, obj)
        if obj is not None and obj.is_held:
            return fieldsets
        return [fieldset for fieldset in fieldsets if fieldset[0] != HELD_SECTION]


@admin.register(Refund)
class RefundAdmin(_ReadOnlyMixin, admin.ModelAdmin):
    list_display = ("payment", "amount", "reference_number", "transaction_date", "created_at")
    search_fields = ("reference_number", "payment__ecommerce_id", "payment__metadata_1")
    list_select_related = ("payment",)
    ordering = ("-created_at",)
    readonly_fields = (
        "payment",
        "amount",
        "reference_number",
        "daily_transaction_id",
        "message",
        "transaction_date",
        "created_at",
    )
    fields = readonly_fields


@admin.register(UnmatchedRefund)
class UnmatchedRefundAdmin(_PhoneSearchMixin, _ReadOnlyMixin, admin.ModelAdmin):
    """Refunds ATH Móvil reported that no stored payment could be linked to, for a person to
    look at (``athm_sync.unmatched``). Deleting one dismisses it; a scan that reads it again
    lists it again."""

    list_display = (
        "first_seen_at",
        "amount",
        "reference_number",
        "daily_transaction_id",
        "transaction_date",
        "source",
        "times_seen",
        "reason",
    )
    list_filter = ("source",)
    search_fields = ("reference_number", "daily_transaction_id", "customer_name", "customer_phone")
    date_hierarchy = "first_seen_at"
    readonly_fields = (
        "amount",
        "reference_number",
        "daily_transaction_id",
        "transaction_date",
        "customer_name",
        "customer_phone",
        "message",
        "source",
        "reason",
        "first_seen_at",
        "last_seen_at",
        "times_seen",
    )
    fields = readonly_fields

    def has_delete_permission(self, request, obj=None) -> bool:
        return request.user.has_perm("athm_sync.delete_unmatchedrefund")


@admin.register(RefundIntent)
class RefundIntentAdmin(_ReadOnlyMixin, admin.ModelAdmin):
    """Refunds being sent, or left half-done for the next run to settle (never re-sent)."""

    list_display = ("payment", "amount", "refunded_before", "created_at", "busy_until", "note")
    list_select_related = ("payment",)
    readonly_fields = (
        "payment",
        "amount",
        "message",
        "refunded_before",
        "created_at",
        "busy_until",
        "note",
    )
    fields = readonly_fields


def _redeliver(
    model_admin: admin.ModelAdmin, request, deliveries: QuerySet, selection: str
) -> None:
    """Call the receivers of ``deliveries`` not delivered since (failing or given up) again now
    (:func:`athm_sync.outbox.redeliver`), at most ``CHECK_NOW_LIMIT`` of them, and say what
    came of it; ``selection`` words the limit for the page ("at most")."""
    from athm_sync.outbox import RedeliveryError, redeliver

    ids = list(
        deliveries.filter(delivered_at__isnull=True)
        .order_by("pk")
        .values_list("pk", flat=True)[: CHECK_NOW_LIMIT + 1]
    )
    if len(ids) > CHECK_NOW_LIMIT:
        model_admin.message_user(
            request,
            f"Select {selection} {CHECK_NOW_LIMIT} failed receivers; "
            "manage.py athm_sync --redeliver all sends every one.",
            messages.ERROR,
        )
        return
    if not ids:
        model_admin.message_user(
            request,
            "Nothing to send again: no receiver of the selection is failing.",
            messages.INFO,
        )
        return
    try:
        attempts = redeliver(ids)
    except RedeliveryError as error:  # delivered meanwhile by a run
        model_admin.message_user(request, f"Not sent: {error}.", messages.ERROR)
        return
    failed = attempts.failed or attempts.problems
    model_admin.message_user(
        request,
        f"Called {len(attempts.done)} failed receiver(s) again: {attempts.delivered} delivered, "
        f"{attempts.failed} failed again.",
        messages.WARNING if failed else messages.SUCCESS,
    )
    for attempt in attempts.done:
        if not attempt.delivered:
            model_admin.message_user(request, attempt.description, messages.ERROR)
    for pk, reason in attempts.problems:
        model_admin.message_user(
            request, f"Failed receiver {pk} could not be called: {reason}", messages.ERROR
        )


class ReceiverDeliveryInline(_ReadOnlyMixin, admin.TabularInline):
    model = ReceiverDelivery
    extra = 0
    can_delete = False
    fields = (
        "receiver",
        "state",
        "attempts",
        "first_failed_at",
        "next_attempt_at",
        "delivered_at",
        "given_up_at",
        "acknowledged_at",
        "last_error",
    )
    readonly_fields = fields
    show_change_link = True


@admin.register(PaymentEvent)
class PaymentEventAdmin(_ReadOnlyMixin, admin.ModelAdmin):
    """The outbox: each transition, when its signal was sent, and the receivers that raised
    (each retried on its own until delivered or given up: the inline, and "Send again")."""

    list_display = (
        "created_at",
        "kind",
        "payment",
        "from_status",
        "to_status",
        "source",
        "dispatched_at",
        "receiver_errors",
    )
    list_filter = ("kind", "source", ("dispatched_at", admin.EmptyFieldListFilter))
    search_fields = ("payment__ecommerce_id", "payment__reference_number", "payment__metadata_1")
    date_hierarchy = "created_at"
    list_select_related = ("payment",)
    ordering = ("-created_at", "-id")
    readonly_fields = (
        "payment",
        "refund",
        "kind",
        "from_status",
        "to_status",
        "source",
        "created_at",
        "dispatched_at",
        "receiver_errors",
        "errors_readable",
    )
    fields = readonly_fields
    inlines = (ReceiverDeliveryInline,)
    actions = ("redeliver_action",)

    class Media:
        css = {"all": ["athm_sync/admin.css"]}

    @admin.display(description="receiver errors, in full")
    def errors_readable(self, event: PaymentEvent) -> str:
        """Each receiver that raised when the signal was first sent: its error and traceback."""
        if not event.errors:
            return "None: every receiver returned."
        return format_html_join(
            "",
            "<p><strong>{}</strong>: {}</p>{}",
            (
                (error.get("receiver", "?"), error.get("error", ""), _traceback(error))
                for error in event.errors
            ),
        )

    @admin.action(
        description="Send again now: call the failed receivers of the selected events",
        permissions=["act"],
    )
    def redeliver_action(self, request, queryset):
        """Call each receiver of the selected events that raised and is not delivered since
        (failing or given up) again now; the receivers that succeeded are never called."""
        deliveries = ReceiverDelivery.objects.filter(event__in=queryset)
        _redeliver(self, request, deliveries, "events with at most")


class ReceiverStateFilter(admin.SimpleListFilter):
    """Failing (still retried), given up, or delivered since."""

    title = "state"
    parameter_name = "state"

    def lookups(self, request, model_admin):
        return (
            ("failing", "Failing"),
            ("given_up", "Given up, not acknowledged"),
            ("acknowledged", "Given up, acknowledged"),
            ("delivered", "Delivered"),
        )

    def queryset(self, request, queryset):
        if self.value() == "failing":
            return queryset.filter(delivered_at__isnull=True, given_up_at__isnull=True)
        if self.value() == "given_up":
            return queryset.filter(
                delivered_at__isnull=True, given_up_at__isnull=False, acknowledged_at__isnull=True
            )
        if self.value() == "acknowledged":
            return queryset.filter(delivered_at__isnull=True, acknowledged_at__isnull=False)
        if self.value() == "delivered":
            return queryset.filter(delivered_at__isnull=False)
        return queryset


@admin.register(ReceiverDelivery)
class ReceiverDeliveryAdmin(_ReadOnlyMixin, admin.ModelAdmin):
    """Signal receivers that raised, and their retries: each is called again alone, with
    backoff, until delivered or given up; "Send again" calls it now."""

    list_display = (
        "id",
        "receiver",
        "event",
        "state",
        "attempts",
        "first_failed_at",
        "last_failed_at",
        "next_attempt_at",
        "delivered_at",
        "given_up_at",
        "acknowledged_at",
    )
    list_filter = (ReceiverStateFilter, "event__kind")
    search_fields = ("receiver", "event__payment__ecommerce_id", "event__payment__metadata_1")
    list_select_related = ("event",)
    ordering = ("-first_failed_at", "-id")
    readonly_fields = (
        "event",
        "receiver",
        "state",
        "attempts",
        "first_failed_at",
        "last_failed_at",
        "next_attempt_at",
        "delivered_at",
        "given_up_at",
        "acknowledged_at",
        "last_error",
        "last_traceback_readable",
    )
    fields = readonly_fields
    actions = ("redeliver_action", "acknowledge_action")

    class Media:
        css = {"all": ["athm_sync/admin.css"]}

    @admin.display(description="last traceback")
    def last_traceback_readable(self, delivery: ReceiverDelivery) -> str:
        return _traceback({"traceback": delivery.last_traceback})

    @admin.action(
        description="Send again now: call the selected failed receivers",
        permissions=["act"],
    )
    def redeliver_action(self, request, queryset):
        """Call the selected receivers that are not delivered (failing or given up) again now."""
        _redeliver(self, request, queryset, "at most")

    def has_acknowledge_permission(self, request) -> bool:
        """Acknowledging silences a given-up receiver: the change permission, not view."""
        return request.user.has_perm("athm_sync.change_receiverdelivery")

    @admin.action(
        description="Acknowledge: their orders are settled by hand, stop reporting them",
        permissions=["acknowledge"],
    )
    def acknowledge_action(self, request, queryset):
        """Mark the selected given-up receivers as settled (:func:`athm_sync.outbox.acknowledge`):
        runs stop listing them, ``--health`` stops counting them. Others are left alone, and
        the message says why."""
        from athm_sync.outbox import acknowledge

        rows = list(queryset.values_list("pk", "delivered_at", "given_up_at", "acknowledged_at"))
        given_up = [pk for pk, delivered, given, seen in rows if not delivered and given]
        done = acknowledge(
            [pk for pk, delivered, given, seen in rows if pk in given_up and not seen]
        )
        skipped = {
            "delivered": sum(1 for _, delivered, _, _ in rows if delivered),
            "still being retried (they count until delivered or given up)": sum(
                1 for _, delivered, given, _ in rows if not delivered and not given
            ),
            "acknowledged already": len(given_up) - len(done),
        }
        words = "; ".join(f"{n} {why}" for why, n in skipped.items() if n)
        self.message_user(
            request,
            f"Acknowledged {len(done)} given-up receiver(s)"
            + (f"; left alone: {words}" if words else "")
            + ".",
            messages.SUCCESS if done else messages.WARNING,
        )


@admin.register(SyncRun)
class SyncRunAdmin(_ReadOnlyMixin, admin.ModelAdmin):
    """The history of ``manage.py athm_sync`` runs, newest first."""

    list_display = (
        "started_at",
        "duration",
        "exit_code",
        "checked",
        "unchanged",
        "signals_sent",
        "receiver_errors",
        "error_count",
        "host",
    )
    list_filter = ("exit_code",)
    date_hierarchy = "started_at"
    ordering = ("-started_at", "-id")
    readonly_fields = (
        "started_at",
        "finished_at",
        "alive_until",
        "host",
        "pid",
        "options",
        "checked",
        "unchanged",
        "transitions",
        "signals_sent",
        "receiver_errors",
        "errors_readable",
        "exit_code",
        "calls",
    )
    fields = readonly_fields

    @admin.display(description="duration")
    def duration(self, run: SyncRun) -> str:
        if run.finished_at is None:
            return "running, or died"
        return f"{(run.finished_at - run.started_at).total_seconds():.2f} s"

    @admin.display(description="errors")
    def error_count(self, run: SyncRun) -> int:
        return len(run.errors or [])

    @admin.display(description="errors")
    def errors_readable(self, run: SyncRun) -> str:
        return _pretty(run.errors)


def _traceback(error: dict) -> str:
    """A recorded traceback in a ``<pre>``, or why there is none."""
    if error.get("traceback"):
        return format_html('<pre class="athm-raw">{}</pre>', error["traceback"])
    return format_html(
        "<p>{}</p>",
        "No traceback: recorded before tracebacks were kept (migration 0013), or the receiver "
        "was not called (not connected any more).",
    )


def _pretty(value) -> str:
    """A JSON value, indented, in a ``<pre>`` (escaped: it may hold what a sender wrote)."""
    return format_html("<pre>{}</pre>", json.dumps(value, indent=2, sort_keys=True, default=str))


class _ChangeListWithoutBodies(ChangeList):
    """The inbox's list page, which shows neither the body nor the payload: not read, since
    each can be 64 KiB and a page lists 100 events."""

    def get_queryset(self, request, *args, **kwargs):
        return super().get_queryset(request, *args, **kwargs).defer("body", "payload")


@admin.register(WebhookEvent)
class WebhookEventAdmin(_ReadOnlyMixin, admin.ModelAdmin):
    """The inbox: every webhook the view accepted, with what came of it and why."""

    list_display = (
        "received_at",
        "transaction_type",
        "status",
        "outcome",
        "ecommerce_id_spelled",
        "reference_number",
        "amount",
        "deliveries",
    )
    list_filter = ("outcome", "transaction_type", "status")
    search_fields = ("ecommerce_id", "reference_number", "idempotency_key")
    date_hierarchy = "received_at"
    list_select_related = ("payment",)
    readonly_fields = (
        "received_at",
        "remote_addr",
        "transaction_type",
        "status",
        "ecommerce_id_spelled",
        "reference_number",
        "amount",
        "idempotency_key",
        "outcome",
        "reason",
        "payment",
        "deliveries",
        "attempts",
        "processed_at",
        "processing_until",
        "next_attempt_at",
        "body_as_received",
        "payload_readable",
    )
    fields = readonly_fields
    actions = ("reprocess",)

    class Media:
        css = {"all": ["athm_sync/admin.css"]}

    def get_changelist(self, request, **kwargs):
        return _ChangeListWithoutBodies

    @admin.display(description=ECOMMERCE_ID, ordering="ecommerce_id")
    def ecommerce_id_spelled(self, event: WebhookEvent):
        return event.ecommerce_id

    @admin.display(description="body, as received")
    def body_as_received(self, event: WebhookEvent) -> str:
        """The body byte for byte (as text when it is UTF-8, as base64 otherwise)."""
        if not event.body:
            return (
                "Not kept: this event was stored before webhook bodies were kept whole "
                "(migration 0012); the payload below is its parsed reading."
            )
        size = len(event.body_bytes())
        if event.body_encoding == WebhookEvent.BodyEncoding.BASE64:
            note = (
                f"{size} bytes, not UTF-8: shown as base64 (WebhookEvent.body_bytes() decodes it)"
            )
        else:
            note = f"{size} bytes of UTF-8, exactly as received"
        return format_html('<p>{}</p><pre class="athm-raw">{}</pre>', note, event.body)

    @admin.display(description="payload, as parsed (keys sorted)")
    def payload_readable(self, event: WebhookEvent) -> str:
        return _pretty(event.payload)

    @admin.action(
        description="Reprocess: verify the selected pending or rejected events again",
        permissions=["act"],
    )
    def reprocess(self, request, queryset):
        """Verify the selected pending or rejected events with ATH Móvil again and apply what
        is true; say what came of each event selected, the ones skipped too, and why."""
        events = list(
            queryset.order_by("received_at", "pk").values_list("pk", "outcome")[
                : CHECK_NOW_LIMIT + 1
            ]
        )
        if len(events) > CHECK_NOW_LIMIT:
            self.message_user(
                request,
                f"Select at most {CHECK_NOW_LIMIT} events; the next athm_sync run verifies "
                "every pending event anyway.",
                messages.ERROR,
            )
            return
        try:
            lines = _reprocess_events(events)
        except ImproperlyConfigured as error:
            self.message_user(request, f"Nothing reprocessed: {error}", messages.ERROR)
            return
        tally: dict[str, int] = {}
        for line in lines:
            tally[line.result] = tally.get(line.result, 0) + 1
        summary = ", ".join(f"{count} {result}" for result, count in tally.items())
        settled = all(line.level == messages.SUCCESS for line in lines)
        self.message_user(
            request,
            f"Reprocessed {len(events)} selected event(s): {summary}.",
            messages.SUCCESS if settled else messages.WARNING,
        )
        for line in lines:
            self.message_user(request, line.text, line.level)


class _ReprocessLine(NamedTuple):
    """What "Reprocess" made of one selected event: ``result`` is the summary's word for it."""

    result: str
    text: str
    level: int


# Only these are verified again; a settled event says why it is left as it is.
_REPROCESSED = (WebhookEvent.Outcome.PENDING, WebhookEvent.Outcome.REJECTED)
_SETTLED_WHY = {
    WebhookEvent.Outcome.APPLIED: "it was applied already",
    WebhookEvent.Outcome.UNCHANGED: "ATH Móvil confirmed it already (no change)",
    WebhookEvent.Outcome.IGNORED: "it is ignored (see its reason)",
}


def _reprocess_events(events: list[tuple[int, str]]) -> list[_ReprocessLine]:
    """Verify each pending or rejected event of ``events`` (``(id, outcome)``) again, as the
    webhook view would (each within ``WEBHOOK_VERIFY_TIMEOUT``), and word what came of every
    one of them. After an event ATH Móvil could not be asked about, the rest are not tried
    (each would wait out the same): they say so. Raises ``ImproperlyConfigured`` when the
    settings cannot be used (nothing is tried)."""
    from athm_sync import deadlines
    from athm_sync.conf import get_settings
    from athm_sync.inbox import process, verification_client

    conf = get_settings()
    client = verification_client(conf)
    lines: list[_ReprocessLine] = []
    unreachable = False
    for pk, before in events:
        name = f"Webhook event {pk}"
        if before not in _REPROCESSED:
            why = _SETTLED_WHY.get(before, f"it is {before}")
            lines.append(
                _ReprocessLine(
                    "skipped",
                    f"{name} skipped: {why}; only pending or rejected events are verified again.",
                    messages.INFO,
                )
            )
            continue
        if unreachable:
            lines.append(
                _ReprocessLine(
                    "not tried",
                    f"{name} not tried: ATH Móvil could not be asked about the event before "
                    f"it; it stays {before}.",
                    messages.WARNING,
                )
            )
            continue
        with deadlines.budget(conf.webhook_verify_timeout):
            done = process(WebhookEvent(pk=pk), client, conf=conf, retry_rejected=True)
        if done is None:
            lines.append(
                _ReprocessLine(
                    "skipped",
                    f"{name} skipped: another process is verifying it right now, or settled it "
                    "since the page was shown.",
                    messages.INFO,
                )
            )
            continue
        unreachable = done.unreachable
        lines.append(_reprocessed_line(name, before, done.event))
    return lines


def _reprocessed_line(name: str, before: str, event: WebhookEvent) -> _ReprocessLine:
    outcome = WebhookEvent.Outcome
    if event.outcome in (outcome.APPLIED, outcome.UNCHANGED):
        word = "applied" if event.outcome == outcome.APPLIED else "no change"
        return _ReprocessLine(word, f"{name} {word}: {event.reason}", messages.SUCCESS)
    word = f"still {event.outcome}" if event.outcome == before else str(event.outcome)
    level = messages.INFO if event.outcome == outcome.IGNORED else messages.ERROR
    return _ReprocessLine(word, f"{name} {word}: {event.reason}", level)
