"""What is recorded of a receiver that raised (athm_sync.tracebacks): bounded, no secrets."""

from __future__ import annotations

from athm_sync import tracebacks


def raised(error: BaseException) -> BaseException:
    try:
        raise error
    except BaseException as caught:
        return caught


def test_a_huge_traceback_keeps_both_ends_within_the_bound():
    error = raised(RuntimeError("the mailer said: " + "x" * 100_000 + " (end)"))

    text = tracebacks.full(error)

    assert len(text) < tracebacks.MAX_TRACEBACK_CHARS + 100
    assert text.startswith("Traceback (most recent call last):")
    assert ", in raised" in text and "RuntimeError: the mailer said: xxx" in text
    assert text.endswith("x (end)\n")
    assert "characters of the traceback cut" in text


def test_the_secrets_the_app_knows_are_masked_and_nothing_else(settings):
    settings.ATHM_SYNC = {
        **settings.ATHM_SYNC,
        "PUBLIC_TOKEN": "public-token-123",
        "PRIVATE_TOKEN": "private-token-456",
    }
    settings.SECRET_KEY = "django-secret-key-789"
    error = raised(ValueError("private-token-456 public-token-123 django-secret-key-789 w0w a-pub"))

    assert tracebacks.one_line(error) == "ValueError: **** **** **** w0w a-pub"
    assert "private-token-456" not in tracebacks.full(error)
    assert tracebacks.one_line(raised(ValueError("x" * 900))) == "ValueError: " + "x" * 488
