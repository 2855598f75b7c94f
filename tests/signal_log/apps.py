import os
from typing import Any

from django.apps import AppConfig

LOG_ENV = "ATHM_TEST_SIGNAL_LOG"


def append_line(path: str, line: str) -> None:
    """Append ``line`` and a newline in one write: atomic for O_APPEND on a local file."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, f"{line}\n".encode())
    finally:
        os.close(fd)


class SignalLogConfig(AppConfig):
    name = "tests.signal_log"
    label = "athm_test_signal_log"
    verbose_name = "athm_sync signal log (tests only)"

    def ready(self) -> None:
        from athm_sync import signals

        path = os.environ.get(LOG_ENV)
        if not path:
            return

        def receiver_for(kind: str) -> Any:
            def receiver(sender: Any, payment: Any, **kwargs: Any) -> None:
                append_line(path, f"{kind} {payment.pk} {os.getpid()}")

            return receiver

        for kind in ("payment_completed", "payment_cancelled", "payment_expired", "refund_sent"):
            getattr(signals, kind).connect(
                receiver_for(kind), weak=False, dispatch_uid=f"athm_test_signal_log.{kind}"
            )
