"""A signal receiver's failure as it is recorded for a person: its one line and its traceback.

Both go to the database (``PaymentEvent.errors``, ``ReceiverDelivery.last_error`` and
``last_traceback``) and are shown in the admin, so both are bounded and have the secrets this
app knows masked: the ATH Móvil tokens, the webhook secrets and Django's ``SECRET_KEY``,
wherever a receiver's message or source line holds them. The traceback is Python's own
(frames, source lines, chained exceptions), without local variables.
"""

from __future__ import annotations

import traceback

from django.conf import settings

from athm_sync.conf import raw_settings

MASK = "****"
# A receiver's one line: its exception's type and message.
MAX_ERROR_CHARS = 500
# Enough for a deep stack; of a longer one (a huge message, long chains) both ends are kept:
# where the call came from, and the failing frame with the exception.
MAX_TRACEBACK_CHARS = 16_000
# A configured value shorter than this is no real secret, and masking it would garble text.
MIN_SECRET_LENGTH = 8
_SECRET_KEYS = ("PUBLIC_TOKEN", "PRIVATE_TOKEN", "WEBHOOK_SECRET", "WEBHOOK_PREVIOUS_SECRET")


def one_line(error: BaseException) -> str:
    """``error``'s type and message, secrets masked, cut to ``MAX_ERROR_CHARS``."""
    return mask_secrets(f"{type(error).__name__}: {error}")[:MAX_ERROR_CHARS]


def full(error: BaseException) -> str:
    """``error``'s traceback as Python prints it, secrets masked; when longer than
    ``MAX_TRACEBACK_CHARS``, its first and last halves of that, and a line between them
    saying how much was cut."""
    text = mask_secrets("".join(traceback.format_exception(error)))
    if len(text) <= MAX_TRACEBACK_CHARS:
        return text
    half = MAX_TRACEBACK_CHARS // 2
    cut = len(text) - 2 * half
    return f"{text[:half]}\n[… {cut} characters of the traceback cut …]\n{text[-half:]}"


def mask_secrets(text: str) -> str:
    """``text`` with each secret the app knows replaced by ``****``."""
    for secret in sorted(_secrets(), key=len, reverse=True):
        text = text.replace(secret, MASK)
    return text


def _secrets() -> set[str]:
    raw = raw_settings()
    values = [raw.get(key) for key in _SECRET_KEYS] if isinstance(raw, dict) else []
    values.append(getattr(settings, "SECRET_KEY", None))
    return {
        value.strip()
        for value in values
        if isinstance(value, str) and len(value.strip()) >= MIN_SECRET_LENGTH
    }
