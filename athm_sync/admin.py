"""Read-only admin pages: payments, refunds and webhooks come from ATH Móvil, never from a form.

The auth token is never shown.
"""

from __future__ import annotations

from django.contrib import admin

from athm_sync.models import Payment, Refund, WebhookEvent


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


@admin.register(Payment)
class PaymentAdmin(_ReadOnlyMixin, admin.ModelAdmin):
    list_display = (
        "ecommerce_id",
        "status",
        "total",
        "total_refunded_amount",
        "reference_number",
        "metadata_1",
        "created_at",
    )
    list_filter = ("status",)
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
            "Sync",
            {
                "classes": ("collapse",),
                "fields": (
                    "timeout",
                    "next_check_at",
                    "check_count",
                    "last_checked_at",
                    "last_error",
                    "claimed_until",
                    "claimed_by",
                ),
            },
        ),
    )
    readonly_fields = tuple(field for _, options in fieldsets for field in options["fields"])


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
