"""The ATH Móvil HTTP client: :class:`ATHMovilClient`, one method per endpoint.

One :class:`ATHMovilClient` holds one ``requests.Session`` whose connection pool is sized for
concurrent workers, so it can be shared between threads. Transient failures (the table in
ATHM_API.md) are retried (:mod:`athm_sync.retries`), bounded by a number of attempts and by a
total deadline per call.

Every attempt has a deadline for its whole answer, connecting included: ``read_timeout``, or
what is left of the call's ``retry_deadline`` if that is less. requests' own timeouts apply to
each socket operation, so an answer that drips a byte at a time would never trip them: the
body is read in chunks against the deadline, and :mod:`athm_sync.deadlines`'s watchdog shuts
the attempt's sockets down when it passes, cutting a drip in the status line or the headers
too. An answer larger than ``max_answer_bytes`` is refused.

What is retried depends on whether repeating the call is safe, and on whether anything of the
request was written to the socket, which :mod:`athm_sync.transport` records while sending:

- A failure before any byte of the request was written (connection refused, DNS failure,
  connect timeout, a TLS handshake or proxy tunnel that failed) is retried for every call.
- Once the request may have left, including onto a kept-alive connection that turns out dead
  when written to, a failure is retried only for the calls that change nothing when repeated:
  find payment, cancel, update phone number, the transaction report and the webhook
  subscription. For create payment, authorization and refund it is raised as
  ``TransientError``: a lost answer to a refund must be reconciled (find payment shows the
  refunded amount), never sent again, since that could pay the customer twice.
- When the client cannot tell (the request did not go through urllib3's HTTP(S) connection
  classes: a SOCKS proxy, or a test double replacing the transport), it assumes the request
  may have left.

The answer types (:mod:`athm_sync.answers`) and the errors (:mod:`athm_sync.errors`) are
exported from here too. Tokens are never logged and never appear in exception messages.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import time
import uuid
from collections.abc import Callable
from datetime import datetime
from decimal import Decimal
from typing import Any, TypeVar
from urllib.parse import urlsplit

import requests

from athm_sync import normalize
from athm_sync.answers import (
    CreatedPayment,
    PaymentSnapshot,
    RefundResult,
    Report,
    ReportTransaction,
    refund_result,
    required_text,
)
from athm_sync.calls import CallCounts
from athm_sync.deadlines import WATCHDOG, Deadline, budget_left
from athm_sync.endpoints import (
    AUTHORIZE,
    CANCEL,
    CREATE_PAYMENT,
    DEFAULT_API_BASE_URL,
    DEFAULT_REPORT_BASE_URL,
    FIND_PAYMENT,
    REFUND,
    REPORT,
    SUBSCRIBE,
    UPDATE_PHONE,
    Endpoint,
)
from athm_sync.errors import (
    EMPTY_REPORT_CODES,
    TRANSIENT_HTTP_STATUSES,
    ATHMovilError,
    AuthenticationError,
    AuthTokenError,
    InvalidRequestError,
    InvalidResponseError,
    InvalidStateError,
    NotFoundError,
    TransientError,
    error_class,
)
from athm_sync.retries import RETRY_LOG_MARK as RETRY_LOG_MARK  # athm_subscribe marks retries
from athm_sync.retries import with_retries
from athm_sync.transport import CONNECTING, NotSent, TrackingAdapter, prepare, progress

__all__ = [
    "ATHMovilClient",
    "ATHMovilError",
    "AuthTokenError",
    "AuthenticationError",
    "CreatedPayment",
    "InvalidRequestError",
    "InvalidResponseError",
    "InvalidStateError",
    "NotFoundError",
    "PaymentSnapshot",
    "RefundResult",
    "Report",
    "ReportTransaction",
    "TransientError",
]

logger = logging.getLogger("athm_sync.client")
# The largest answer a call reads (a long transaction report is a few MiB); more is refused.
DEFAULT_MAX_ANSWER_BYTES = 32 * 1024 * 1024
_CHUNK_BYTES = 64 * 1024

_Method = TypeVar("_Method", bound=Callable[..., Any])


def _counted(endpoint: Endpoint) -> Callable[[_Method], _Method]:
    """Count the failure a public method ends in against ``endpoint`` (``client.calls``), its
    answer found malformed included; the calls themselves are counted as they are sent."""

    def decorate(method: _Method) -> _Method:
        @functools.wraps(method)
        def counted(self: ATHMovilClient, *args: Any, **kwargs: Any) -> Any:
            try:
                return method(self, *args, **kwargs)
            except ATHMovilError as error:
                self.calls.failed(endpoint.name, error)
                raise

        return counted  # type: ignore[return-value]

    return decorate


class ATHMovilClient:
    """A client for ATH Móvil's eCommerce API. Build one with :meth:`from_settings`.

    Safe to share between threads; ``pool_size`` should be at least the number of threads.
    ``read_timeout`` bounds each attempt's whole answer (connecting, status line, headers and
    body), ``retry_deadline`` all attempts of a call together, waits included, and
    ``connect_timeout`` the connecting alone. ``max_answer_bytes`` is the largest answer read.
    ``sleep`` is how it waits between retries (tests pass a recorder instead of sleeping).
    ``should_stop`` is asked before each retry: once it says the run is stopping, a failed
    call is not tried again (its error is raised at once).
    """

    def __init__(
        self,
        public_token: str,
        private_token: str = "",
        *,
        api_base_url: str = DEFAULT_API_BASE_URL,
        report_base_url: str = DEFAULT_REPORT_BASE_URL,
        connect_timeout: float = 3.05,
        read_timeout: float = 15.0,
        max_attempts: int = 4,
        retry_deadline: float = 30.0,
        pool_size: int = 10,
        max_answer_bytes: int = DEFAULT_MAX_ANSWER_BYTES,
        sleep: Callable[[float], None] = time.sleep,
        should_stop: Callable[[], bool] | None = None,
    ) -> None:
        if not isinstance(public_token, str) or not public_token.strip():
            raise ValueError("public_token must be the non-blank public token of the business")
        if not isinstance(private_token, str):
            raise ValueError("private_token must be a string (blank if refunds are not used)")
        self._public_token = public_token.strip()
        self._private_token = private_token.strip()
        self.api_base_url = _base_url("api_base_url", api_base_url)
        self.report_base_url = _base_url("report_base_url", report_base_url)
        self.connect_timeout = _positive("connect_timeout", connect_timeout)
        self.read_timeout = _positive("read_timeout", read_timeout)
        self.retry_deadline = _positive("retry_deadline", retry_deadline)
        self.max_attempts = _positive("max_attempts", max_attempts, whole=True)
        self.pool_size = _positive("pool_size", pool_size, whole=True)
        self.max_answer_bytes = _positive("max_answer_bytes", max_answer_bytes, whole=True)
        self._sleep = sleep
        self._should_stop = should_stop or (lambda: False)
        # What this client sent and how it failed (athm_sync.calls); a run records its share.
        self.calls = CallCounts()
        self.session = requests.Session()
        # No retries inside urllib3: athm_sync.retries decides, knowing which calls are repeatable.
        adapter = TrackingAdapter(pool_connections=2, pool_maxsize=self.pool_size, max_retries=0)
        self.session.mount("http://", adapter)
        self.session.mount("https://", adapter)
        self.session.headers.update(
            {"Accept": "application/json", "User-Agent": "django-athm-sync"}
        )
        # The environment (HTTP(S)_PROXY, NO_PROXY, REQUESTS_CA_BUNDLE) is read once, here:
        # requests would read it again for every call (all of os.environ, twice, and
        # ~/.netrc), which cost more CPU than the rest of a findPayment.
        self.session.trust_env = False
        self._proxies = {
            base: requests.utils.get_environ_proxies(base)
            for base in (self.api_base_url, self.report_base_url)
        }
        bundle = os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("CURL_CA_BUNDLE")
        if bundle:
            self.session.verify = bundle

    @classmethod
    def from_settings(cls, **overrides: Any) -> ATHMovilClient:
        """A client configured from the ``ATHM_SYNC`` setting (raises ``ImproperlyConfigured``)."""
        from athm_sync.conf import get_settings

        conf = get_settings()
        options: dict[str, Any] = {
            "public_token": conf.public_token,
            "private_token": conf.private_token,
            "api_base_url": conf.api_base_url,
            "report_base_url": conf.report_base_url,
            "connect_timeout": conf.connect_timeout,
            "read_timeout": conf.read_timeout,
            "max_attempts": conf.max_attempts,
            "retry_deadline": conf.retry_deadline,
            "pool_size": max(conf.pool_size, conf.workers),
        }
        options.update(overrides)
        return cls(**options)

    def __repr__(self) -> str:
        return f"<ATHMovilClient {self.api_base_url}>"

    def close(self) -> None:
        """Close the pooled connections."""
        self.session.close()

    def __enter__(self) -> ATHMovilClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- the calls ---------------------------------------------------------------------

    @_counted(CREATE_PAYMENT)
    def create_payment(
        self,
        *,
        total: Decimal,
        subtotal: Decimal = Decimal("0"),
        tax: Decimal = Decimal("0"),
        metadata_1: str = "",
        metadata_2: str = "",
        items: list[dict[str, Any]] | None = None,
        phone_number: str | None = None,
        timeout: int = 600,
    ) -> CreatedPayment:
        """Create a payment server-side; returns its id and the auth token to capture it.

        Amounts are sent as strings with two decimals, so no float ever carries money.
        ``phone_number`` is the phone ATH Móvil pushes the payment request to; without one
        (``None``, ``""``) the body carries no ``phoneNumber`` and no push is sent.
        """
        body: dict[str, Any] = {
            "publicToken": self._public_token,
            "timeout": str(timeout),
            "total": _amount_text(total, "total"),
            "subtotal": _amount_text(subtotal, "subtotal"),
            "tax": _amount_text(tax, "tax"),
            "metadata1": metadata_1,
            "metadata2": metadata_2,
            "items": items or [],
        }
        phone_digits = normalize.digits(phone_number) if phone_number is not None else ""
        if phone_digits:
            body["phoneNumber"] = phone_digits
        data = self._data(CREATE_PAYMENT, body)
        return self._parse(
            CREATE_PAYMENT,
            lambda: CreatedPayment(
                ecommerce_id=normalize.ecommerce_id(data.get("ecommerceId")),
                auth_token=required_text(data, "auth_token"),
                raw=data,
            ),
        )

    @_counted(FIND_PAYMENT)
    def find_payment(self, ecommerce_id: uuid.UUID | str) -> PaymentSnapshot:
        """The payment as ATH Móvil sees it now; ``NotFoundError`` if it does not know it."""
        body = {"ecommerceId": str(ecommerce_id), "publicToken": self._public_token}
        data = self._data(FIND_PAYMENT, body)
        return self._parse(FIND_PAYMENT, lambda: PaymentSnapshot.from_api(data))

    @_counted(AUTHORIZE)
    def authorize(self, auth_token: str) -> PaymentSnapshot:
        """Capture a CONFIRM payment with its auth token; returns the completed payment."""
        data = self._data(AUTHORIZE, {}, auth_token=auth_token)
        return self._parse(AUTHORIZE, lambda: PaymentSnapshot.from_api(data))

    @_counted(UPDATE_PHONE)
    def update_phone_number(
        self, ecommerce_id: uuid.UUID | str, phone_number: str, auth_token: str
    ) -> None:
        """Change the phone number an OPEN payment is sent to."""
        body = {"ecommerceId": str(ecommerce_id), "phoneNumber": normalize.digits(phone_number)}
        self._request(UPDATE_PHONE, body, auth_token=auth_token)

    @_counted(CANCEL)
    def cancel(self, ecommerce_id: uuid.UUID | str) -> PaymentSnapshot | None:
        """Cancel an OPEN or CONFIRM payment; returns the payment when ATH Móvil sends it."""
        body = {"ecommerceId": str(ecommerce_id), "publicToken": self._public_token}
        answer = self._request(CANCEL, body)
        data = answer.get("data") if isinstance(answer, dict) else None
        if isinstance(data, dict) and data.get("ecommerceId"):
            return self._parse(CANCEL, lambda: PaymentSnapshot.from_api(data))
        return None

    @_counted(REFUND)
    def refund(
        self,
        reference_number: str,
        amount: Decimal | str,
        message: str = "",
        *,
        ecommerce_id: uuid.UUID | str | None = None,
    ) -> RefundResult:
        """Refund ``amount`` of a completed payment. Never retried once it may have been sent:
        after a lost answer, find the payment and compare its refunded amount instead.

        ATH Móvil's answer describes the refunded payment (``originalTransaction``) without
        its ``ecommerceId``: pass ``ecommerce_id`` (the payment whose ``reference_number`` is
        refunded) to have it as ``RefundResult.payment``; without it, or when the answer is
        about another reference number, ``payment`` is ``None``.
        """
        if len(message) > 50:
            raise ValueError("a refund message can be at most 50 characters")
        body = {
            "publicToken": self._public_token,
            "privateToken": self._require_private_token(REFUND),
            "referenceNumber": reference_number,
            "amount": _amount_text(amount, "amount"),
            "message": message,
        }
        answer = self._request(REFUND, body)
        # The documented answer is enveloped ({"status", "data": {"refund", ...}}); the older
        # v4 API's answer, also documented, is the bare {"refund", "originalTransaction"}.
        data = answer.get("data") if isinstance(answer, dict) else None
        if data is None and isinstance(answer, dict) and isinstance(answer.get("refund"), dict):
            data = answer
        if not isinstance(data, dict):
            raise InvalidResponseError(
                "the answer has no 'data' object", call=REFUND.name, http_status=200
            )
        known_id = None if ecommerce_id is None else normalize.ecommerce_id(ecommerce_id)
        return self._parse(REFUND, lambda: refund_result(data, reference_number, known_id))

    @_counted(REPORT)
    def transaction_report(self, from_date: datetime, to_date: datetime) -> list[ReportTransaction]:
        """Every transaction between two aware datetimes; an empty range gives ``[]``.

        Raises ``InvalidResponseError`` if any row cannot be parsed; :meth:`report_rows` keeps
        the others.
        """
        report = self.report_rows(from_date, to_date)
        if report.unparsable:
            index, reason = report.unparsable[0]
            raise InvalidResponseError(
                f"the answer is malformed: row {index}: {reason}", call=REPORT.name, http_status=200
            )
        return report.transactions

    @_counted(REPORT)
    def report_rows(self, from_date: datetime, to_date: datetime) -> Report:
        """The transaction report between two aware datetimes, row by row: a row that cannot
        be parsed is listed in ``unparsable`` (its index and why) and the others are kept."""
        body = {
            "publicToken": self._public_token,
            "privateToken": self._require_private_token(REPORT),
            "fromDate": normalize.to_local_string(from_date),
            "toDate": normalize.to_local_string(to_date),
        }
        try:
            answer = self._request(REPORT, body)
        except ATHMovilError as error:
            if (error.errorcode or "").upper() in EMPTY_REPORT_CODES:
                return Report()
            raise
        rows = answer.get("data") if isinstance(answer, dict) else answer
        if not isinstance(rows, list):
            raise InvalidResponseError("the answer is not a list of transactions", call=REPORT.name)
        report = Report()
        for index, row in enumerate(rows):
            try:
                if not isinstance(row, dict):
                    raise ValueError(f"a row must be an object, not {type(row).__name__}")
                report.transactions.append(ReportTransaction.from_api(row))
            except (ValueError, TypeError, AttributeError) as error:
                report.unparsable.append((index, self._scrub(str(error))[:200]))
        return report

    @_counted(SUBSCRIBE)
    def subscribe_webhooks(
        self,
        listener_url: str,
        *,
        ecommerce_payment_received: bool = True,
        ecommerce_payment_cancelled: bool = True,
        ecommerce_payment_expired: bool = True,
        refund_sent: bool = True,
        payment_received: bool = False,
        donation_received: bool = False,
    ) -> dict[str, Any]:
        """Register ``listener_url`` for the chosen webhook events; returns the raw answer."""
        body = {
            "publicToken": self._public_token,
            "privateToken": self._require_private_token(SUBSCRIBE),
            "listenerURL": listener_url,
            "paymentReceivedEvent": payment_received,
            "refundSentEvent": refund_sent,
            "donationReceivedEvent": donation_received,
            "ecommercePaymentReceivedEvent": ecommerce_payment_received,
            "ecommercePaymentCancelledEvent": ecommerce_payment_cancelled,
            "ecommercePaymentExpiredEvent": ecommerce_payment_expired,
        }
        answer = self._request(SUBSCRIBE, body)
        return answer if isinstance(answer, dict) else {"answer": answer}

    # -- plumbing ----------------------------------------------------------------------

    def _require_private_token(self, endpoint: Endpoint) -> str:
        if not self._private_token:
            raise ValueError(f"{endpoint.name} needs the private token; it is not configured")
        return self._private_token

    def _data(
        self, endpoint: Endpoint, body: dict[str, Any], auth_token: str | None = None
    ) -> dict[str, Any]:
        answer = self._request(endpoint, body, auth_token=auth_token)
        data = answer.get("data") if isinstance(answer, dict) else None
        if not isinstance(data, dict):
            raise InvalidResponseError(
                "the answer has no 'data' object", call=endpoint.name, http_status=200
            )
        return data

    def _request(
        self, endpoint: Endpoint, body: dict[str, Any], auth_token: str | None = None
    ) -> Any:
        """Send one call with retries; returns the decoded JSON of a successful answer.

        The call ends within ``retry_deadline``, or what is left of the thread's
        :func:`athm_sync.deadlines.budget` if that is less; a spent budget sends nothing.
        """
        self.calls.sent(endpoint.name)
        started = time.monotonic()
        call_deadline = self.retry_deadline
        left = budget_left()
        if left is not None:
            if left <= 0:
                raise TransientError(
                    "not sent: the time allowed for these calls is spent",
                    call=endpoint.name,
                    cause="timeout",
                )
            call_deadline = min(call_deadline, left)
        try:
            return with_retries(
                endpoint,
                lambda: self._attempt(endpoint, body, auth_token, started, call_deadline),
                max_attempts=self.max_attempts,
                deadline=call_deadline,
                sleep=self._sleep,
                should_stop=self._should_stop,
                calls=self.calls,
            )
        except NotSent as not_sent:
            raise TransientError(str(not_sent), call=endpoint.name, cause="unreachable") from None

    def _attempt(
        self,
        endpoint: Endpoint,
        body: dict[str, Any],
        auth_token: str | None,
        started: float,
        call_deadline: float,
    ) -> Any:
        base = self.report_base_url if endpoint.report else self.api_base_url
        headers = {"Content-Type": "application/json"}
        if auth_token is not None:
            headers["Authorization"] = f"Bearer {auth_token}"
        # The whole answer, connecting included, within READ_TIMEOUT and what is left of the
        # call's RETRY_DEADLINE; socket timeouts no longer than that make a stall end with it.
        remaining = call_deadline - (time.monotonic() - started)
        deadline = Deadline(max(0.001, min(self.read_timeout, remaining)))
        timeout = (min(self.connect_timeout, deadline.seconds), deadline.seconds)
        progress.stage = None
        progress.deadline = deadline
        WATCHDOG.watch(deadline)
        sent = time.perf_counter()
        try:
            # Straight to the adapter: none of what the session adds (cookies, redirects, the
            # merging of its settings) is wanted here, and it cost as much CPU as the request.
            # A redirect is not followed: it comes back as an answer that is not ATH Móvil's.
            request = prepare(
                endpoint.method, base + endpoint.path, {**self.session.headers, **headers}, body
            )
            response = self.session.get_adapter(request.url).send(
                request,
                stream=True,
                timeout=timeout,
                verify=self.session.verify,
                proxies=self._proxies[base],
            )
            content = self._read_answer(endpoint, response, deadline)
            if deadline.expired:
                # Cut by the watchdog: http.client takes the end of the stream for the end of
                # the headers (or of a body without a length), so what was read is not whole.
                raise requests.Timeout("the whole-answer deadline passed")
        except requests.RequestException as error:
            within = f"within {_seconds(deadline.seconds)} s"
            # Whatever the exception says: only a failure while connecting, before a byte of
            # the request was written, is known not to have reached ATH Móvil.
            if progress.stage == CONNECTING:
                reason = f"no connection {within}" if deadline.passed() else _describe(error)
                raise NotSent(self._scrub(f"could not connect: {reason}", auth_token)) from None
            cause = "connection"
            if deadline.passed() or isinstance(error, requests.Timeout):
                message, cause = f"no whole answer {within}", "timeout"
            elif isinstance(error, requests.ConnectionError):
                message = f"the connection failed: {_describe(error)}"
            else:
                message = _describe(error)
            # What urllib3 says can quote the server's bytes (a bad chunk length, a header).
            raise TransientError(
                self._scrub(message, auth_token), call=endpoint.name, cause=cause
            ) from None
        finally:
            progress.stage = None
            progress.deadline = None
            WATCHDOG.finish(deadline)
        logger.debug(
            "ATH Móvil %s answered HTTP %s in %.0f ms",
            endpoint.name,
            response.status_code,
            (time.perf_counter() - sent) * 1000,
        )
        return self._decode(endpoint, response.status_code, content, auth_token)

    def _read_answer(
        self, endpoint: Endpoint, response: requests.Response, deadline: Deadline
    ) -> bytes:
        """The body, read in chunks against the deadline and the size limit.

        A drip inside one chunk's read is cut by the watchdog; this loop catches a trickle of
        whole chunks. Raises ``requests.Timeout`` when the deadline passes, and
        ``InvalidResponseError`` for an answer larger than ``max_answer_bytes`` (after it was
        sent: a refund's answer that is refused is never sent again).
        """
        limit = self.max_answer_bytes
        declared = response.headers.get("Content-Length", "").strip()
        try:
            if declared.isdigit() and int(declared) > limit:
                raise InvalidResponseError(
                    f"the answer announces {declared} bytes, more than the {limit} a call reads",
                    call=endpoint.name,
                    http_status=response.status_code,
                )
            chunks = []
            size = 0
            for chunk in response.iter_content(_CHUNK_BYTES):
                size += len(chunk)
                if size > limit:
                    raise InvalidResponseError(
                        f"the answer is more than {limit} bytes",
                        call=endpoint.name,
                        http_status=response.status_code,
                    )
                if deadline.passed():
                    raise requests.Timeout("the whole-answer deadline passed")
                chunks.append(chunk)
        except BaseException:
            response.close()  # the rest of the answer is unread: the connection is not reused
            raise
        return b"".join(chunks)

    def _decode(
        self, endpoint: Endpoint, status_code: int, content: bytes, auth_token: str | None
    ) -> Any:
        try:
            answer = json.loads(content)
        except ValueError:
            cls = (
                TransientError
                if status_code in TRANSIENT_HTTP_STATUSES or status_code >= 500
                else InvalidResponseError
            )
            raise cls(
                f"HTTP {status_code} with a body that is not JSON",
                call=endpoint.name,
                http_status=status_code,
            ) from None
        if isinstance(answer, dict) and (
            str(answer.get("status", "")).lower() == "error" or answer.get("errorcode")
        ):
            # Every field of an error answer may echo what was sent, tokens included.
            code = self._scrub(_error_text(answer.get("errorcode")), auth_token) or None
            message = self._scrub(_error_text(answer.get("message")), auth_token)
            raise error_class(code, status_code)(
                message or f"HTTP {status_code}",
                errorcode=code,
                http_status=status_code,
                call=endpoint.name,
            )
        if status_code >= 400:
            raise error_class(None, status_code)(
                f"HTTP {status_code}", http_status=status_code, call=endpoint.name
            )
        return answer

    def _parse(self, endpoint: Endpoint, build: Callable[[], Any]) -> Any:
        """Build an answer type, turning a malformed field into ``InvalidResponseError`` (its
        message quotes the answer, so the tokens are scrubbed from it)."""
        try:
            return build()
        except (ValueError, TypeError, AttributeError) as error:
            raise InvalidResponseError(
                self._scrub(f"the answer is malformed: {error}"),
                call=endpoint.name,
                http_status=200,
            ) from None

    def _scrub(self, text: str, *others: str | None) -> str:
        """Remove the merchant's tokens (and ``others``: a payment's auth token) from text that
        came back from the server."""
        for secret in (self._public_token, self._private_token, *others):
            if secret and secret.strip():
                text = text.replace(secret.strip(), "***")
        return text


def _error_text(value: Any) -> str:
    """A field of an error answer as one line of text, whatever its type."""
    if isinstance(value, str | int | float) and not isinstance(value, bool):
        return normalize.text(value).replace("\n", " ")[:500]
    return "" if value is None else normalize.text(json.dumps(value, default=str))[:500]


def _seconds(value: float) -> str:
    """Seconds as people write them: 2.0, 0.3 (for 0.2999), 0.05."""
    if value < 0.1:
        return f"{value:.2g}"
    value = round(value, 2)
    return f"{value:.1f}" if round(value, 1) == value else f"{value:g}"


def _amount_text(value: Any, name: str) -> str:
    if isinstance(value, float):
        raise ValueError(f"{name} must be a Decimal or a string, not a float")
    return str(normalize.money(value, name))


def _describe(error: BaseException) -> str:
    """A one-line description of a requests error, without URLs' query strings or bodies."""
    reason = error.args[0] if error.args else error
    reason = getattr(reason, "reason", reason)
    text = str(reason) or type(error).__name__
    return text.splitlines()[0][:200]


def _base_url(name: str, value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError(f"{name} must be an http(s) URL, not {value!r}")
    parts = urlsplit(value.strip())
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"{name} must be an http(s) URL, not {value!r}")
    return value.strip().rstrip("/")


def _positive(name: str, value: Any, whole: bool = False) -> Any:
    kinds = (int,) if whole else (int, float)
    if isinstance(value, bool) or not isinstance(value, kinds) or value <= 0:
        expected = "a whole number of at least 1" if whole else "a number greater than 0"
        raise ValueError(f"{name} must be {expected}, not {value!r}")
    return value
