"""The signals shops connect receivers to.

They carry the same names and arguments as django-athm's, so receivers written for that
package keep working with only the import path changed:

- ``payment_completed``, ``payment_cancelled``, ``payment_expired``: sender ``Payment``,
  argument ``payment``.
- ``refund_sent``: sender ``Refund``, arguments ``refund`` and ``payment``.

Each is sent exactly once per transition, after the transaction that recorded it commits.
"""

from django.dispatch import Signal

payment_completed = Signal()
payment_cancelled = Signal()
payment_expired = Signal()
refund_sent = Signal()

__all__ = ["payment_cancelled", "payment_completed", "payment_expired", "refund_sent"]
