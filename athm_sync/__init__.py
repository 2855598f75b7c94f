"""django-athm-sync: keeps a Django shop's ATH Móvil payments true."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("django-athm-sync")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0"

__all__ = ["__version__", "refund", "sync_payment"]


def sync_payment(ecommerce_id):  # type: ignore[no-untyped-def]
    """Check one stored payment with ATH Móvil now and apply what changed, firing its signals.

    For a shop's "thank you" page: the same path as ``manage.py athm_sync``, for one payment.
    Returns the :class:`athm_sync.reconcile.Outcome` (``outcome.payment`` is the fresh row).
    Raises ``Payment.DoesNotExist`` for a payment that is not stored, ``ValueError`` for an id
    that is not a UUID, and ``athm_sync.client.AuthenticationError`` when the credentials are
    rejected; other API failures are recorded on the payment (``last_error``).
    """
    from athm_sync.managers import validate_ecommerce_id
    from athm_sync.reconcile import check_payment

    return check_payment(validate_ecommerce_id(ecommerce_id))


def refund(payment, amount=None, message="", **options):  # type: ignore[no-untyped-def]
    """Refund ``amount`` of a completed (or held) payment, all that is left when ``None``.

    Validates before anything is sent, sends the refund at most once, records the ``Refund``
    and fires ``refund_sent`` once; returns the ``Refund``. Raises
    ``athm_sync.refunds.RefundError`` (a ``ValueError``) when it was not made. See
    :func:`athm_sync.refunds.refund`.
    """
    from athm_sync.refunds import refund as make_refund

    return make_refund(payment, amount, message, **options)
