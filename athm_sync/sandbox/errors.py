"""The sandbox's errors: ATH Móvil's own (:class:`SandboxError`) and the control API's."""

from __future__ import annotations


class SandboxError(Exception):
    """An ATH Móvil error: ``errorcode`` and ``message`` go in the envelope, with ``http_status``.

    The control API maps the same errors to its own statuses (404 unknown, 409 wrong state).
    """

    def __init__(self, errorcode: str, message: str, http_status: int = 400) -> None:
        super().__init__(f"{errorcode}: {message}")
        self.errorcode = errorcode
        self.message = message
        self.http_status = http_status


class StateConflict(ValueError):
    """A control action that does not fit the payment's state (the control API answers 409)."""


class ListenerFailed(Exception):
    """An expiry listener (a shop in this process) raised; the payment was left as it was.

    The control API answers 500 with the message: the shop, not the sandbox, is at fault.
    """


def unknown_payment(ecommerce_id: str) -> SandboxError:
    """The error ATH Móvil answers for an ecommerceId it does not know."""
    return SandboxError("BTRA_0031", f"ecommerceId {ecommerce_id} does not exist", 400)
