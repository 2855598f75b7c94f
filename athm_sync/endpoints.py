"""The ATH Móvil endpoints the client calls, and which of them are safe to send again."""

from __future__ import annotations

from dataclasses import dataclass

DEFAULT_API_BASE_URL = "https://payments.athmovil.com"
DEFAULT_REPORT_BASE_URL = "https://www.athmovil.com"
ECOMMERCE = "/api/business-transaction/ecommerce"


@dataclass(frozen=True)
class Endpoint:
    name: str
    method: str
    path: str
    report: bool = False  # served from the report base URL
    # Safe to send again after it may have reached ATH Móvil.
    repeatable: bool = True


CREATE_PAYMENT = Endpoint("create payment", "POST", f"{ECOMMERCE}/payment", repeatable=False)
FIND_PAYMENT = Endpoint("findPayment", "POST", f"{ECOMMERCE}/business/findPayment")
UPDATE_PHONE = Endpoint("updatePhoneNumber", "PUT", f"{ECOMMERCE}/business/updatePhoneNumber")
AUTHORIZE = Endpoint("authorization", "POST", f"{ECOMMERCE}/authorization", repeatable=False)
CANCEL = Endpoint("cancel", "POST", f"{ECOMMERCE}/business/cancel")
REFUND = Endpoint("refund", "POST", f"{ECOMMERCE}/refund", repeatable=False)
REPORT = Endpoint("transaction report", "GET", "/transactions/v4/transactionReport", report=True)
SUBSCRIBE = Endpoint("webhook subscription", "POST", "/transactions/webhook/post", report=True)
