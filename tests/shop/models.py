"""The test shop's own model: what a shop's receiver writes when a payment's signal arrives."""

from django.db import models


class Fulfilment(models.Model):
    """One row per signal a receiver handled. Deliberately not unique: a doubled signal would
    show as two rows instead of an error."""

    payment_id = models.UUIDField()
    kind = models.CharField(max_length=32)
    pid = models.PositiveIntegerField()
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        app_label = "athm_test_shop"

    def __str__(self) -> str:
        return f"{self.kind} {self.payment_id} (pid {self.pid})"
