"""The customer's side of a server-side payment: :func:`start`, the waiting page, its status
endpoint, cancel and "send it to another phone", in Spanish and English.

See docs/checkout.md. Nothing is imported at module load: Django imports
``athm_sync.checkout.models`` while it loads the app's models.
"""

from __future__ import annotations

from typing import Any

__all__ = ["CheckoutError", "InvalidPhoneNumber", "Unavailable", "start"]
_ERRORS = ("CheckoutError", "InvalidPhoneNumber", "Unavailable")


def start(request: Any, **kwargs: Any) -> Any:
    """Create the payment from the server's amounts and redirect to its waiting page.

    See :func:`athm_sync.checkout.flow.start` for the arguments.
    """
    from athm_sync.checkout.flow import start as start_checkout

    return start_checkout(request, **kwargs)


def __getattr__(name: str) -> Any:
    """The errors of :mod:`athm_sync.checkout.flow`, imported when first asked for."""
    if name in _ERRORS:
        from athm_sync.checkout import flow

        return getattr(flow, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
