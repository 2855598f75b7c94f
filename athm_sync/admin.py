"""Read-only admin pages: payments, refunds and webhooks come from ATH Móvil, never from a form.

The auth token is never shown. The one thing the admin does is the "Refund" action: for one
selected payment it asks for the amount on a confirmation page, then refunds it through
:func:`athm_sync.refunds.refund`. It needs the ``athm_sync.refund_payment`` permission.
"""

from __future__ import annotations

from decimal import Decimal

from django import forms
from django.contrib import admin, messages
from django.contrib.admin import helpers
from django.template.response import TemplateResponse

from athm_sync.models import Payment, Refund, WebhookEvent
from athm_sync.refunds import MAX_MESSAGE_LENGTH, RefundError, refund, refundable_amount


class _ReadOnlyMixin:
    def has_add_permission(self, request, obj=None) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False

    def has_delete_permission(self, request, obj=None) -> bool:
        return False


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
    """The confirmation page's fields; the refund itself validates everything again."""

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


@admin.register(Payment)
class PaymentAdmin(_ReadOnlyMixin, admin.ModelAdmin):
    list_display = (
        "ecommerce_id",
        "status",
        "total",
        "remote_total",
        "total_refunded_amount",
        "reference_number",
        "metadata_1",
        "created_at",
    )
    list_filter = ("status", GivenUpFilter)
    search_fields = (
        "reference_number",
        "metadata_1",
        "metadata_2",
        "ecommerce_id",
        "customer_email",
    )
    date_hierarchy = "created_at"
    ordering = ("-created_at",)
    exclude = ("auth_token",)
    inlines = (RefundInline,)
    fieldsets = (
        (None, {"fields": ("ecommerce_id", "status", "reference_number", "daily_transaction_id")}),
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

    actions = ("refund_action",)

    def has_refund_permission(self, request) -> bool:
        return request.user.has_perm("athm_sync.refund_payment")

    @admin.action(description="Refund the selected payment…", permissions=["refund"])
    def refund_action(self, request, queryset):
        """Ask for the amount, then refund one payment (the confirmation page posts back)."""
        if queryset.count() != 1:
            self.message_user(request, "Select exactly one payment to refund.", messages.ERROR)
            return None
        payment = queryset.get()
        form = RefundForm(request.POST if "confirm" in request.POST else None)
        if form.is_bound and form.is_valid():
            try:
                made = refund(payment, form.cleaned_data["amount"], form.cleaned_data["message"])
            except RefundError as error:
                self.message_user(request, f"Not refunded: {error}", messages.ERROR)
            else:
                self.message_user(
                    request, f"Refunded ${made.amount} of payment {payment.pk}.", messages.SUCCESS
                )
            return None
        context = {
            **self.admin_site.each_context(request),
            "title": "Refund an ATH Móvil payment",
            "opts": self.model._meta,
            "payment": payment,
            "refundable": refundable_amount(payment),
            "form": form if form.is_bound else RefundForm(),
            "action_checkbox_name": helpers.ACTION_CHECKBOX_NAME,
        }
        return TemplateResponse(request, "admin/athm_sync/payment/refund.html", context)

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


@admin.register(WebhookEvent)
class WebhookEventAdmin(_ReadOnlyMixin, admin.ModelAdmin):
    """The inbox: every webhook the view accepted, with what came of it and why."""

    list_display = (
        "received_at",
        "transaction_type",
        "status",
        "outcome",
        "ecommerce_id",
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
        "ecommerce_id",
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
        "payload",
    )
    fields = readonly_fields
