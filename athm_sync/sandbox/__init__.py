"""A faithful fake ATH Móvil eCommerce server for tests, demos, benchmarks and development.

ATH Móvil has no test environment, so this serves the real paths and shapes (quirks included),
expires payments by their own timeouts on a movable clock, takes refunds, posts webhooks and
injects faults. Stdlib plus ``requests``; it does not import Django.

    with SandboxServer() as sandbox:
        ecommerce_id, auth_token = sandbox.create_payment("10.00")
        sandbox.complete(ecommerce_id)

Run it standalone with ``python -m athm_sync.sandbox --port 8765``. The parts, each readable
alone: :mod:`.ledger` (payments, refunds, lifecycle), :mod:`.clock`, :mod:`.tokens`,
:mod:`.faults`, :mod:`.counters`, :mod:`.report`, :mod:`.webhooks`; :mod:`.state` composes
them and :mod:`.server` serves them over HTTP. For pytest, see :mod:`athm_sync.testing`.
"""

from athm_sync.sandbox.clock import SandboxClock
from athm_sync.sandbox.counters import ENDPOINTS, Counters
from athm_sync.sandbox.errors import ListenerFailed, SandboxError, StateConflict
from athm_sync.sandbox.faults import FAULT_KINDS, Fault, Faults
from athm_sync.sandbox.formats import fee_for
from athm_sync.sandbox.ledger import CANCEL, COMPLETED, CONFIRM, OPEN, Ledger, Payment, Refund
from athm_sync.sandbox.report import TransactionReport
from athm_sync.sandbox.server import SandboxServer
from athm_sync.sandbox.state import SandboxState
from athm_sync.sandbox.tokens import AuthTokens
from athm_sync.sandbox.webhooks import Webhooks

__all__: list[str] = [
    "CANCEL",
    "COMPLETED",
    "CONFIRM",
    "ENDPOINTS",
    "FAULT_KINDS",
    "OPEN",
    "AuthTokens",
    "Counters",
    "Fault",
    "Faults",
    "Ledger",
    "ListenerFailed",
    "Payment",
    "Refund",
    "SandboxClock",
    "SandboxError",
    "SandboxServer",
    "SandboxState",
    "StateConflict",
    "TransactionReport",
    "Webhooks",
    "fee_for",
]
