"""A faithful fake ATH Móvil eCommerce server for tests, demos, benchmarks and development.

ATH Móvil has no test environment, so this serves the real paths and shapes (quirks included),
expires payments by their own timeouts on a movable clock, takes refunds, posts webhooks and
injects faults. Stdlib plus ``requests``; it does not import Django.

    with SandboxServer() as sandbox:
        ecommerce_id, auth_token = sandbox.create_payment("10.00")
        sandbox.complete(ecommerce_id)

Run it standalone with ``python -m athm_sync.sandbox --port 8765``.
"""

from athm_sync.sandbox.server import SandboxServer
from athm_sync.sandbox.state import (
    ENDPOINTS,
    FAULT_KINDS,
    SandboxError,
    SandboxState,
    StateConflict,
    fee_for,
)

__all__ = [
    "ENDPOINTS",
    "FAULT_KINDS",
    "SandboxError",
    "SandboxServer",
    "SandboxState",
    "StateConflict",
    "fee_for",
]
