from decimal import Decimal

from django.db import models


class Order(models.Model):
    """What the customer buys; ATH Móvil's signals move its status."""

    class Status(models.TextChoices):
        PENDING = "pending"
        PAID = "paid"
        EXPIRED = "expired"

    total = models.DecimalField(max_digits=8, decimal_places=2, default=Decimal("0"))
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.PENDING)

    def __str__(self) -> str:
        return f"{self.reference} ({self.status})"

    @property
    def reference(self) -> str:
        """What the Payment Button sends as ``metadata1``, and the receivers look up."""
        return f"order-{self.pk}"
