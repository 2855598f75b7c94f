"""The errors the ATH Móvil client raises, and the one function that classifies them.

Every failure of a call is an :class:`ATHMovilError`; its subclass says what a caller can do
about it. Each carries ATH Móvil's ``errorcode`` (``None`` when the failure never got an
answer), its message and the HTTP status. Tokens never appear in them.
"""

from __future__ import annotations


class ATHMovilError(Exception):
    """A call to ATH Móvil failed."""

    retryable = False

    def __init__(
        self,
        message: str,
        *,
        errorcode: str | None = None,
        http_status: int | None = None,
        call: str = "",
    ) -> None:
        self.message = message
        self.errorcode = errorcode
        self.http_status = http_status
        self.call = call
        super().__init__(str(self))

    def __str__(self) -> str:
        where = f"ATH Móvil {self.call}" if self.call else "ATH Móvil"
        code = f" [{self.errorcode}]" if self.errorcode else ""
        return f"{where}: {self.message}{code}"


class AuthenticationError(ATHMovilError):
    """The merchant's public or private token was rejected: stop and fix the settings."""


class AuthTokenError(AuthenticationError):
    """A payment's auth token (from create payment) was rejected or has expired."""


class NotFoundError(ATHMovilError):
    """ATH Móvil does not know this transaction (``BTRA_0031`` and kin)."""


class InvalidRequestError(ATHMovilError):
    """ATH Móvil refused the request as invalid; sending it again will not help."""


class InvalidStateError(ATHMovilError):
    """The payment is in the wrong state for the call (not confirmed, cancelled, expired)."""


class TransientError(ATHMovilError):
    """A failure that may pass: timeouts, dropped connections, HTTP 5xx/429, ``BTRA_9998``.

    Raised once the retries allowed for the call are spent. ``cause`` says what failed when
    no answer came: ``"unreachable"`` (no connection), ``"timeout"`` (no whole answer in time)
    or ``"connection"`` (it broke after the request was sent); it is empty for an answer.
    """

    retryable = True

    def __init__(
        self,
        message: str,
        *,
        errorcode: str | None = None,
        http_status: int | None = None,
        call: str = "",
        cause: str = "",
    ) -> None:
        self.cause = cause
        super().__init__(message, errorcode=errorcode, http_status=http_status, call=call)


class InvalidResponseError(ATHMovilError):
    """ATH Móvil answered with something that is not what the API documents."""


AUTH_TOKEN_CODES = frozenset({"TOKEN.INVALID.HEADER", "TOKEN.EXPIRED"})
CREDENTIAL_CODES = frozenset({"BTRA_0401", "BTRA_0402", "BTRA_0403", "BTRA_0017"})
NOT_FOUND_CODES = frozenset({"BTRA_0031", "BTRA_0007", "BTRA_0014", "BTRA_0053"})
INVALID_STATE_CODES = frozenset({"BTRA_0032", "BTRA_0037", "BTRA_0039"})
INVALID_REQUEST_CODES = frozenset(
    {
        "BTRA_0001",
        "BTRA_0003",
        "BTRA_0004",
        "BTRA_0006",
        "BTRA_0013",
        "BTRA_0038",
        "BTRA_0040",
        # report date range invalid, too long, or in the future
        "BTRA_0025",
        "BTRA_0026",
        "BTRA_0047",
        "BTRA_0048",
    }
)
TRANSIENT_CODES = frozenset({"BTRA_9998", "BTRA_9999", "BTRA_0015", "BTRA_0016"})
EMPTY_REPORT_CODES = frozenset({"BTRA_0022", "BTRA_0046"})
TRANSIENT_HTTP_STATUSES = frozenset({429, 500, 502, 503, 504})


def error_class(errorcode: str | None, http_status: int | None) -> type[ATHMovilError]:
    """The exception class for an error answer, by its errorcode first and HTTP status second."""
    code = (errorcode or "").strip().upper()
    for codes, cls in (
        (AUTH_TOKEN_CODES, AuthTokenError),
        (CREDENTIAL_CODES, AuthenticationError),
        (NOT_FOUND_CODES, NotFoundError),
        (INVALID_STATE_CODES, InvalidStateError),
        (INVALID_REQUEST_CODES, InvalidRequestError),
        (TRANSIENT_CODES, TransientError),
    ):
        if code in codes:
            return cls
    if http_status is None or http_status < 400:
        return ATHMovilError
    if http_status in TRANSIENT_HTTP_STATUSES or http_status >= 500:
        return TransientError
    if http_status in (401, 403):
        return AuthenticationError
    if http_status == 404:
        return NotFoundError
    return InvalidRequestError
