"""``manage.py athm_sandbox expire ECOMMERCE_ID...``: let payments time out now, in development.

For a shop pointed at the sandbox server (``python -m athm_sync.sandbox``, another process):
each payment's time runs out in the sandbox and in this shop at once
(:func:`athm_sync.sandbox_expiry.expire`), and the payment is checked, so the shop records an
expiry and sends ``payment_expired`` as it does when a real payment times out, without waiting
for the timeout. The sandbox's ``expire`` control alone cannot do it: ATH Móvil's answers do
not carry a payment's creation time, so the shop's own deadline would still be ahead, and its
CANCEL a cancellation.

Exit status: 0 when every payment expired; 1 when some did not (each said in one line on
stderr: not stored, no longer open, unknown to the sandbox, its check failed); 2 when none can
be (``API_BASE_URL`` is not a sandbox on this machine, the sandbox cannot be reached or rejects
the credentials, a bad setting or option, a database that cannot be used).
"""

from __future__ import annotations

from typing import Any

from django.core.exceptions import ImproperlyConfigured
from django.core.management.base import CommandParser

from athm_sync.errors import AuthenticationError
from athm_sync.management.base import OneLineErrorCommand
from athm_sync.models import Payment
from athm_sync.runner import EXIT_ERRORS
from athm_sync.sandbox_expiry import ExpiryRefused, SandboxUnavailable, expire


class Command(OneLineErrorCommand):
    help = (
        "Development: let payments time out now in the sandbox and in this shop, then check "
        "them (payment_expired is sent). Only with API_BASE_URL on this machine."
    )
    program = "athm_sandbox"

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "action",
            choices=["expire"],
            help="expire: the payments' time runs out now, here and in the sandbox.",
        )
        parser.add_argument(
            "ecommerce_ids",
            nargs="+",
            metavar="ECOMMERCE_ID",
            help="Stored OPEN or CONFIRM payments, by their ecommerceId.",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        verbose = int(options["verbosity"]) >= 1
        not_expired = 0
        for ecommerce_id in options["ecommerce_ids"]:
            try:
                outcome = expire(ecommerce_id)
            except ExpiryRefused as error:
                self._say_error(str(error))
                not_expired += 1
                continue
            except SandboxUnavailable as error:
                self.fail(str(error))
            except ImproperlyConfigured as error:
                self.fail(f"bad ATHM_SYNC setting: {error}")
            except AuthenticationError as error:
                self.fail(
                    f"the sandbox rejected the credentials: {error}; check "
                    "ATHM_SYNC['PUBLIC_TOKEN'] against the tokens the sandbox accepts"
                )
            payment = outcome.payment
            if payment.status != Payment.Status.EXPIRED:
                reason = outcome.error or payment.last_error or "ATH Móvil's answer"
                self._say_error(
                    f"payment {payment.pk} timed out in the sandbox, but is {payment.status} "
                    f"here ({reason}); its deadline has passed, so the next athm_sync run "
                    "records the expiry"
                )
                not_expired += 1
            elif verbose:
                self.stdout.write(f"athm_sandbox: payment {payment.pk} {_how(outcome)}")
        if not_expired:
            raise SystemExit(EXIT_ERRORS)

    def _say_error(self, message: str) -> None:
        self.stderr.write(f"{self.program}: error: {' '.join(message.split())}")


def _how(outcome: Any) -> str:
    """How the payment came to be EXPIRED: this check, or the sandbox's webhook before it."""
    if not outcome.changed:
        return "expired: EXPIRED (the sandbox's expired webhook was here first)"
    failing = f", {outcome.receiver_errors} receiver(s) raised" if outcome.receiver_errors else ""
    return f"expired: EXPIRED, payment_expired sent{failing}"
