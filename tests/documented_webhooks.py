"""Evertec's documented webhook samples, verbatim, and what a test arranges for each.

Every sample below is copied as published in Evertec's README of
https://github.com/evertec/athmovil-webhooks (README.md, section "List of Events", commit
eb996de): "Simulated Payment", "eCommerce Payment Completed", "eCommerce Payment Cancelled",
"eCommerce Payment Expired", "Payment Received", "Donation Received" and "Refund Sent". None
of the eCommerce ones carries an ``ecommerceId``. The samples are never edited: a test moves
the clock to the samples' date and stores a payment that matches them instead.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # Django is imported by the helpers only: the sandbox's tests run without it
    from athm_sync.models import Payment

SOURCE = "github.com/evertec/athmovil-webhooks README.md, 'List of Events'"

# "Simulated Payment"
SIMULATED = """{
    "transactionType" : "simulated",
    "status" : "completed",
    "date" : "2020-01-01 12:00:00.0",
    "referenceNumber" : "000000-00000000abcd",
    "dailyTransactionID" : "0001",
    "name" : "Valeria Herrero",
    "phoneNumber" : "7871234567",
    "email" : "email@example.com",
    "message" : "This is a message.",
    "total" : "3.00",
    "tax" : "1.00",
    "subtotal" : "2.00",
    "fee" : "0.06",
    "netAmount" : "0.94",
    "totalRefundedAmount" : "0.00",
    "metadata1" : "This is metadata1",
    "metadata2" : "This is metadata2",
    "items" : [
      {
        "quantity" : "1",
        "tax" : "1.00",
        "metadata" : "metadata test",
        "name" : "First Item",
        "description" : "This is a description.",
        "price" : "0.00"
      },
      {
        "quantity" : "1",
        "tax" : "1.00",
        "metadata" : "metadata test",
        "name" : "Second Item",
        "description" : "This is another description.",
        "price" : "1.00"
      }
    ]
}"""

# "eCommerce Payment Completed"
ECOMMERCE_COMPLETED = """{
    "transactionType" : "ecommerce",
    "status" : "completed",
    "date" : "2020-01-01 12:00:00.0",
    "referenceNumber" : "000000-00000000abcd",
    "dailyTransactionID" : "0001",
    "name" : "Valeria Herrero",
    "phoneNumber" : "7871234567",
    "email" : "email@example.com",
    "message" : "",
    "total" : "3.00",
    "tax" : "1.00",
    "subtotal" : "2.00",
    "fee" : "0.06",
    "netAmount" : "0.94",
    "totalRefundedAmount" : "0.00",
    "metadata1" : "This is metadata1",
    "metadata2" : "This is metadata2",
    "items" : [
      {
        "quantity" : "1",
        "tax" : "1.00",
        "metadata" : "metadata test",
        "name" : "First Item",
        "description" : "This is a description.",
        "price" : "0.00"
      },
      {
        "quantity" : "1",
        "tax" : "1.00",
        "metadata" : "metadata test",
        "name" : "Second Item",
        "description" : "This is another description.",
        "price" : "1.00"
      }
    ]
}"""

# "eCommerce Payment Cancelled" ("only sent when end users cancel the web payment process")
ECOMMERCE_CANCELLED = """{
    "transactionType" : "ecommerce",
    "status" : "cancelled",
    "date" : "2020-01-01 12:00:00.0",
    "referenceNumber" : "",
    "dailyTransactionID" : "",
    "name" : "",
    "phoneNumber" : "",
    "email" : "",
    "message" : "",
    "total" : "3.00",
    "tax" : "1.00",
    "subtotal" : "2.00",
    "fee" : "0.00",
    "netAmount" : "0.00",
    "totalRefundedAmount" : "0.00",
    "metadata1" : "This is metadata1",
    "metadata2" : "This is metadata2",
    "items" : [
      {
        "quantity" : "1",
        "tax" : "1.00",
        "metadata" : "metadata test",
        "name" : "First Item",
        "description" : "This is a description.",
        "price" : "0.00"
      },
      {
        "quantity" : "1",
        "tax" : "1.00",
        "metadata" : "metadata test",
        "name" : "Second Item",
        "description" : "This is another description.",
        "price" : "1.00"
      }
    ]
}"""

# "eCommerce Payment Expired" ("only sent when payments expire on web")
ECOMMERCE_EXPIRED = """{
    "transactionType" : "ecommerce",
    "status" : "expired",
    "date" : "2020-01-01 12:00:00.0",
    "referenceNumber" : "",
    "dailyTransactionID" : "",
    "name" : "",
    "phoneNumber" : "",
    "email" : "",
    "message" : "",
    "total" : "3.00",
    "tax" : "1.00",
    "subtotal" : "2.00",
    "fee" : "0.00",
    "netAmount" : "0.00",
    "totalRefundedAmount" : "0.00",
    "metadata1" : "This is metadata1",
    "metadata2" : "This is metadata2",
    "items" : [
      {
        "quantity" : "1",
        "tax" : "1.00",
        "metadata" : "metadata test",
        "name" : "First Item",
        "description" : "This is a description.",
        "price" : "0.00"
      },
      {
        "quantity" : "1",
        "tax" : "1.00",
        "metadata" : "metadata test",
        "name" : "Second Item",
        "description" : "This is another description.",
        "price" : "1.00"
      }
    ]
}"""

# "Payment Received"
PAYMENT = """{
    "transactionType" : "payment",
    "status" : "completed",
    "date" : "2020-01-01 12:00:00.0",
    "referenceNumber" : "000000-00000000abcd",
    "dailyTransactionID" : "0001",
    "name" : "Valeria Herrero",
    "phoneNumber" : "7871234567",
    "email" : "email@example.com",
    "message" : "This is a message.",
    "total" : "1.00",
    "tax" : "0.00",
    "subtotal" : "0.00",
    "fee" : "0.06",
    "netAmount" : "0.94",
    "totalRefundedAmount" : "0.00",
    "metadata1" : "",
    "metadata2" : "",
    "items" : []
}"""

# "Donation Received"
DONATION = """{
    "transactionType" : "donation",
    "status" : "completed",
    "date" : "2020-01-01 12:00:00.0",
    "referenceNumber" : "000000-00000000abcd",
    "dailyTransactionID" : "0001",
    "name" : "Valeria Herrero",
    "phoneNumber" : "7871234567",
    "email" : "email@example.com",
    "message" : "This is a message.",
    "total" : "1.00",
    "tax" : "0.00",
    "subtotal" : "0.00",
    "fee" : "0.06",
    "netAmount" : "0.94",
    "totalRefundedAmount" : "0.00",
    "metadata1" : "",
    "metadata2" : "",
    "items" : []
}"""

# "Refund Sent"
REFUND = """{
    "transactionType" : "refund",
    "status" : "completed",
    "date" : "2020-01-01 12:00:00.0",
    "referenceNumber" : "000000-00000000abcd",
    "dailyTransactionID" : "0001",
    "name" : "Valeria Herrero",
    "phoneNumber" : "7871234567",
    "email" : "email@example.com",
    "message" : "This is a message.",
    "total" : "1.00",
    "tax" : "0.00",
    "subtotal" : "0.00",
    "fee" : "0.00",
    "netAmount" : "0.00",
    "totalRefundedAmount" : "0.00",
    "metadata1" : "",
    "metadata2" : "",
    "items" : []
}"""

_TEXTS = {
    "simulated": SIMULATED,
    "ecommerce_completed": ECOMMERCE_COMPLETED,
    "ecommerce_cancelled": ECOMMERCE_CANCELLED,
    "ecommerce_expired": ECOMMERCE_EXPIRED,
    "payment": PAYMENT,
    "donation": DONATION,
    "refund": REFUND,
}


def sample(name: str) -> dict:
    """A fresh copy of one documented sample, decoded."""
    return json.loads(_TEXTS[name])


NAMES = tuple(_TEXTS)
ECOMMERCE = ("ecommerce_completed", "ecommerce_cancelled", "ecommerce_expired")
IGNORED = ("simulated", "payment", "donation")
# The samples' "date", 2020-01-01 12:00:00 in Puerto Rico (UTC-4).
MOMENT = datetime(2020, 1, 1, 16, 0, tzinfo=UTC)
# The sample's status: what the sandbox is told (nothing: the payment's time runs out), what
# the payment becomes, its signal.
OUTCOMES = {
    "ecommerce_completed": ("complete", "COMPLETED", "payment_completed"),
    "ecommerce_cancelled": ("cancel", "CANCEL", "payment_cancelled"),
    "ecommerce_expired": (None, "EXPIRED", "payment_expired"),
}


def arrange_ecommerce(sandbox, name: str, time_machine) -> Payment:
    """A stored payment the eCommerce sample ``name`` is about, brought by ATH Móvil (the
    sandbox) into the sample's status at the sample's date, where the clock is left.

    Its total, tax, subtotal and metadata are the sample's. It was created a minute before the
    sample's date (the expired one: its 600-second timeout before, so that it expires then).
    """
    from athm_sync.models import Payment

    body = sample(name)
    created = MOMENT - timedelta(seconds=600 if name == "ecommerce_expired" else 60)
    time_machine.move_to(created, tick=False)
    ecommerce_id, _ = sandbox.create_payment(
        body["total"],
        tax=body["tax"],
        subtotal=body["subtotal"],
        metadata1=body["metadata1"],
        metadata2=body["metadata2"],
        timeout=600,
    )
    payment = Payment.objects.track(
        ecommerce_id,
        total=body["total"],
        tax=body["tax"],
        subtotal=body["subtotal"],
        metadata_1=body["metadata1"],
        metadata_2=body["metadata2"],
        timeout=600,
    )
    time_machine.move_to(MOMENT, tick=False)
    action = OUTCOMES[name][0]
    if action is None:
        sandbox.advance(0)  # ATH Móvil notices the deadline
    else:
        getattr(sandbox, action)(ecommerce_id)
    return payment


def arrange_refund(sandbox) -> Payment:
    """A completed payment whose reference number is the refund sample's, 1.00 of it refunded
    in the ATH Business app: the refund the sample reports.

    The sandbox numbers its own payments, so its findPayment is told to answer with the
    sample's reference number, and a poll stores it.
    """
    from athm_sync import reconcile
    from athm_sync.models import Payment

    body = sample("refund")
    ecommerce_id, _ = sandbox.create_payment("3.00")
    payment = Payment.objects.track(ecommerce_id, total="3.00")
    sandbox.complete(ecommerce_id)
    sandbox.tamper(ecommerce_id, referenceNumber=body["referenceNumber"])
    reconcile.check_payment(payment.pk, source="poll")
    sandbox.refund(ecommerce_id, body["total"], body["message"])
    return Payment.objects.get(pk=payment.pk)
