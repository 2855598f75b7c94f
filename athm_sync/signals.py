"""The signals shops connect receivers to.

They carry the same names and arguments as django-athm's, so receivers written for that
package keep working with only the import path changed:

- ``payment_completed``, ``payment_cancelled``, ``payment_expired``: sender ``Payment``,
  argument ``payment``.
- ``refund_sent``: sender ``Refund``, arguments ``refund`` and ``payment``.

And one of this app's own:

- ``payment_mismatched``: sender ``Payment``, arguments ``payment``, ``expected_total`` (what
  the shop stored), ``remote_total`` (what ATH Móvil completed) and ``reason`` (every field that
  differs). ATH Móvil completed the payment, but not for the total or metadata the shop stored;
  it is held as ``MISMATCHED`` and never becomes COMPLETED by itself. Alert someone; refund it.

Each is sent exactly once per transition, after the transaction that recorded it commits, in
a transaction of its own that also marks it sent: what a receiver writes to the database
commits with that mark, exactly once, whatever moment the process dies. Each receiver runs in
a savepoint; one that raises is rolled back alone. Put effects outside the database (e-mail,
HTTP calls) in ``transaction.on_commit`` inside the receiver.
"""

from django.dispatch import Signal

payment_completed = Signal()
payment_cancelled = Signal()
payment_expired = Signal()
refund_sent = Signal()
payment_mismatched = Signal()

__all__ = [
    "payment_cancelled",
    "payment_completed",
    "payment_expired",
    "payment_mismatched",
    "refund_sent",
]
