"""How ATH Móvil writes amounts and dates, the sandbox's fee rule and its business's names.

Fee rule (documented because tests and the benchmark compare against it): 2.5 % of the total,
rounded half-up to cents, plus $0.10. ``netAmount`` is ``total - fee``. findPayment reports the
fee through a float32, as the real API does (``0.13`` comes back as ``0.12999999523162842``).
"""

from __future__ import annotations

import re
import struct
from datetime import datetime, timedelta, timezone
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation
from typing import Any

from athm_sync.sandbox.errors import SandboxError

CENT = Decimal("0.01")
FEE_RATE = Decimal("0.025")
FEE_FIXED = Decimal("0.10")
# Puerto Rico keeps Atlantic Standard Time all year; ATH Móvil's dates are local to it.
PR_TZ = timezone(timedelta(hours=-4), "AST")
DATE_FORMAT = "%Y-%m-%d %H:%M:%S"

BUSINESS_NAME = "Sandbox Shop"
BUSINESS_PATH = "sandboxshop"
BUSINESS_INDUSTRY = "RETAIL"
BUSINESS_CUSTOMER_ID = "402894c185ab1be40185acfe61c20000"


def to_money(value: Any, name: str, errorcode: str = "BTRA_0004") -> Decimal:
    """Parse an amount given as a number or a string into cents, or raise an invalid request."""
    if isinstance(value, bool) or value is None:
        raise SandboxError(errorcode, f"{name} must be a number", 400)
    try:
        amount = Decimal(str(value).strip())
    except InvalidOperation:
        raise SandboxError(errorcode, f"{name} must be a number", 400) from None
    if not amount.is_finite():
        raise SandboxError(errorcode, f"{name} must be a number", 400)
    return amount.quantize(CENT, rounding=ROUND_HALF_UP)


def json_number(amount: Decimal) -> int | float:
    """An amount as ATH Móvil writes it in JSON: ``1`` for whole amounts, ``0.4`` otherwise."""
    if amount == amount.to_integral_value():
        return int(amount)
    return float(amount)


def float32(amount: Decimal) -> float:
    """The amount after a trip through a float32, the noise the real fee carries."""
    return struct.unpack("f", struct.pack("f", float(amount)))[0]


def pr_local(moment: datetime) -> str:
    """A UTC instant as ATH Móvil's Puerto Rico local date string."""
    return moment.astimezone(PR_TZ).strftime(DATE_FORMAT)


def fee_for(total: Decimal) -> Decimal:
    """The sandbox's fee rule: 2.5 % of the total rounded half-up to cents, plus $0.10."""
    return (total * FEE_RATE).quantize(CENT, rounding=ROUND_HALF_UP) + FEE_FIXED


def phone_digits(value: Any) -> str:
    """A phone number as its digits only: how the sandbox's phone pages key a number."""
    return re.sub(r"\D", "", "" if value is None else str(value))
