"""A shop's own app for the crash tests: receivers that write the shop's rows.

Child processes started by tests/test_crash.py connect them with ``ATHM_TEST_SHOP_RECEIVER``:
``instant`` writes a :class:`Fulfilment` row at once, ``slow`` sleeps 20 ms first (a receiver
doing real work), so a SIGKILL often lands inside a receiver. ``broken`` writes its row, then
raises (its row is rolled back); ``hang`` writes its row, says so on stderr
(``INSIDE_MARKER``) and waits until the process is killed. Every mode's receiver has the same
dotted name, so a receiver that failed in one mode is retried by another.
"""

import os
import sys
import threading
import time
from typing import Any

from django.apps import AppConfig

RECEIVER_ENV = "ATHM_TEST_SHOP_RECEIVER"
KINDS = ("payment_completed", "payment_cancelled", "payment_expired", "refund_sent")
INSIDE_MARKER = "athm-test-shop: inside the receiver"


def fulfil(kind: str, payment: Any, pause: float = 0.0) -> None:
    """What a shop's receiver does: its own database work for the payment."""
    from tests.shop.models import Fulfilment

    if pause:
        time.sleep(pause)
    Fulfilment.objects.create(payment_id=payment.pk, kind=kind, pid=os.getpid())


def connect(mode: str) -> None:
    """Connect a receiver of this kind (``instant`` or ``slow``) to each payment signal."""
    from athm_sync import signals

    pause = {"instant": 0.0, "slow": 0.02, "broken": 0.0, "hang": 0.0}[mode]

    def receiver_for(kind: str) -> Any:
        def receiver(sender: Any, payment: Any, **kwargs: Any) -> None:
            fulfil(kind, payment, pause)
            if mode == "broken":
                raise RuntimeError("the shop's order service is down")
            if mode == "hang":
                sys.stderr.write(f"{INSIDE_MARKER}\n")
                sys.stderr.flush()
                threading.Event().wait()  # until SIGKILL

        return receiver

    for kind in KINDS:
        getattr(signals, kind).connect(
            receiver_for(kind), weak=False, dispatch_uid=f"athm_test_shop.{kind}"
        )


def disconnect() -> None:
    from athm_sync import signals

    for kind in KINDS:
        getattr(signals, kind).disconnect(dispatch_uid=f"athm_test_shop.{kind}")


class ShopConfig(AppConfig):
    name = "tests.shop"
    label = "athm_test_shop"
    verbose_name = "a shop's own app (tests only)"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        mode = os.environ.get(RECEIVER_ENV)
        if mode:
            connect(mode)
