"""Turning ATH Móvil's loosely-typed values into the app's types.

ATH Móvil's answers and webhooks vary in casing, field names and types (see the quirks in
ATHM_API.md). Every value crosses into the app through one of these functions, so each quirk
is handled in exactly one place. Each raises ``ValueError`` with a message that names the
field and what was expected; the client turns that into ``InvalidResponseError``.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Mapping
from datetime import UTC, datetime
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation
from typing import Any
from zoneinfo import ZoneInfo

PUERTO_RICO = ZoneInfo("America/Puerto_Rico")
CENT = Decimal("0.01")
# The largest amount the app stores: what a DecimalField(max_digits=10, decimal_places=2) holds.
MAX_AMOUNT = Decimal("99999999.99")
LOCAL_FORMAT = "%Y-%m-%d %H:%M:%S"
# An epoch timestamp this large or larger counts milliseconds: 10**11 seconds is the year 5138,
# 10**11 milliseconds is March 1973, before any ATH Móvil payment.
EPOCH_MILLISECONDS_FROM = 10**11

# Remote spellings of each status, upper-cased. findPayment says CANCEL for cancelled and
# expired alike; webhooks say which.
_STATUS_SPELLINGS = {
    "OPEN": "OPEN",
    "CONFIRM": "CONFIRM",
    "CONFIRMED": "CONFIRM",
    "COMPLETED": "COMPLETED",
    "COMPLETE": "COMPLETED",
    "CANCEL": "CANCEL",
    "CANCELLED": "CANCEL",
    "CANCELED": "CANCEL",
    "EXPIRED": "EXPIRED",
}


def pick(data: Mapping[str, Any], *names: str, default: Any = None) -> Any:
    """The value of the first of ``names`` that ``data`` holds and is not ``None``
    (field names vary by answer: ``dailyTransactionId`` or ``dailyTransactionID``)."""
    for name in names:
        value = data.get(name)
        if value is not None:
            return value
    return default


def money(value: Any, field: str = "amount") -> Decimal:
    """An amount as ``Decimal`` rounded to cents; numbers go through ``str`` so that
    ``0.6000000238418579`` becomes ``0.60``. Missing or empty means zero."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return Decimal("0.00")
    if isinstance(value, bool) or not isinstance(value, int | float | str | Decimal):
        raise ValueError(f"{field} must be an amount, not {type(value).__name__}")
    try:
        amount = Decimal(str(value).strip().lstrip("$").replace(",", ""))
    except InvalidOperation:
        raise ValueError(f"{field} must be an amount, not {value!r}") from None
    if not amount.is_finite():
        raise ValueError(f"{field} must be a finite amount, not {value!r}")
    if abs(amount) > MAX_AMOUNT:  # nothing ATH Móvil handles; no amount column can hold it
        raise ValueError(f"{field} {str(value)[:30]} is more than any payment can hold")
    return amount.quantize(CENT, rounding=ROUND_HALF_UP)


def text(value: Any, field: str = "value") -> str:
    """A string with stray spaces stripped; ``None`` is empty, numbers become their digits.

    NUL characters are removed and lone surrogates replaced with ``?``: no database column
    stores them (PostgreSQL refuses both), and one such answer must not stop a run.
    """
    if value is None:
        return ""
    if isinstance(value, str):
        return _storable(value).strip()
    if isinstance(value, int | float | Decimal) and not isinstance(value, bool):
        return str(value)
    raise ValueError(f"{field} must be text, not {type(value).__name__}")


def _storable(value: str) -> str:
    if "\x00" in value:
        value = value.replace("\x00", "")
    if not value.isascii():
        value = value.encode("utf-8", "replace").decode("utf-8")
    return value


def _storable_json(value: Any) -> Any:
    """A decoded JSON value with every string (keys included) made storable."""
    if isinstance(value, str):
        return _storable(value)
    if isinstance(value, list):
        return [_storable_json(item) for item in value]
    if isinstance(value, dict):
        return {_storable(str(key)): _storable_json(item) for key, item in value.items()}
    return value


def digits(value: Any, field: str = "phoneNumber") -> str:
    """Only the digits of a phone number given as ``"(787) 555-1234"`` or ``7875551234``."""
    return re.sub(r"\D", "", text(value, field))


def daily_transaction_id(value: Any) -> str:
    """The daily transaction id as ATH Móvil shows it (``"0035"``), whether sent as text or 35."""
    value = text(value, "dailyTransactionId")
    return value.zfill(4) if value.isdigit() else value


def status(value: Any, field: str = "status") -> str:
    """A remote status in the app's spelling: OPEN, CONFIRM, COMPLETED, CANCEL or EXPIRED."""
    spelled = text(value, field).upper()
    try:
        return _STATUS_SPELLINGS[spelled]
    except KeyError:
        raise ValueError(f"{field} {value!r} is not a known ATH Móvil status") from None


def local_datetime(value: Any, field: str = "date") -> datetime | None:
    """A Puerto Rico local time (``"2023-01-13 16:17:06"``, maybe with ``.0``) as aware UTC.

    An epoch timestamp (a number, or text of digits: the refund answer's ``date``) is an
    absolute instant, in milliseconds from 10**11 up and in seconds below (see
    ``EPOCH_MILLISECONDS_FROM``). Empty means not yet (ATH Móvil sends ``""`` before
    completion). Puerto Rico has no daylight saving, so the conversion never meets an
    ambiguous hour.
    """
    if isinstance(value, int | float | Decimal) and not isinstance(value, bool):
        return _epoch(value, field)
    raw = text(value, field)
    if not raw:
        return None
    if raw.isascii() and raw.isdigit():
        return _epoch(int(raw), field)
    try:
        parsed = datetime.fromisoformat(raw.replace("/", "-"))
    except ValueError:
        raise ValueError(f"{field} must be a date like 2023-01-13 16:17:06, not {raw!r}") from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=PUERTO_RICO)
    try:
        return parsed.astimezone(UTC).replace(microsecond=0)
    except OverflowError:  # 9999-12-31 in Puerto Rico is past the calendar's end in UTC
        raise ValueError(f"{field} {raw!r} is out of range") from None


def _epoch(value: int | float | Decimal, field: str) -> datetime:
    """An epoch timestamp in seconds or milliseconds (by magnitude) as aware UTC."""
    seconds = Decimal(str(value))
    if seconds.is_finite() and abs(seconds) >= EPOCH_MILLISECONDS_FROM:
        seconds /= 1000
    try:
        moment = datetime.fromtimestamp(int(seconds), UTC)
    except (ValueError, OverflowError, OSError):
        raise ValueError(
            f"{field} must be a date or an epoch timestamp, not {str(value)[:30]}"
        ) from None
    return moment


def to_local_string(moment: datetime) -> str:
    """An aware datetime as ATH Móvil's Puerto Rico local ``YYYY-MM-DD HH:MM:SS``."""
    if moment.tzinfo is None:
        raise ValueError("datetimes sent to ATH Móvil must be timezone-aware")
    return moment.astimezone(PUERTO_RICO).strftime(LOCAL_FORMAT)


def items(value: Any) -> list[Any]:
    """The items list, sent either as a list or as a JSON-encoded string; its strings are made
    storable as :func:`text` does (no NUL, no lone surrogate)."""
    if value is None or value == "":
        return []
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            raise ValueError("items is a string that is not JSON") from None
    if not isinstance(value, list):
        raise ValueError(f"items must be a list, not {type(value).__name__}")
    try:
        return _storable_json(value)
    except RecursionError:
        raise ValueError("items is nested too deeply") from None


def ecommerce_id(value: Any, field: str = "ecommerceId") -> uuid.UUID:
    """An eCommerce id as ``uuid.UUID``."""
    if isinstance(value, uuid.UUID):
        return value
    raw = text(value, field)
    try:
        return uuid.UUID(raw)
    except ValueError:
        raise ValueError(f"{field} must be a UUID, not {raw!r}") from None
