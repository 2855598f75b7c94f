"""What is recorded of a receiver that raised (athm_sync.tracebacks): bounded, no secrets."""

from __future__ import annotations

import logging

import pytest

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


@pytest.mark.django_db(transaction=True)
def test_a_receiver_quoting_a_token_is_logged_with_its_traceback_masked(
    athm_customer, athm_sync_now, caplog
):
    """The log gets the traceback a person needs, never the token a receiver's message held:
    at the first failure and at each retry."""
    from athm_sync import outbox
    from athm_sync.conf import get_settings
    from athm_sync.signals import payment_completed

    token = get_settings().private_token

    def leaky(sender, payment, **kwargs):
        raise RuntimeError(f"the mailer refused: token={token}")

    payment_completed.connect(leaky, dispatch_uid="leaky")
    try:
        ecommerce_id = athm_customer.pay("5.00", metadata_1="order-5")
        caplog.set_level(logging.WARNING, logger="athm_sync")
        athm_sync_now(ecommerce_id, check=False)
        outbox.redeliver(None)
    finally:
        payment_completed.disconnect(dispatch_uid="leaky")

    failures = [r for r in caplog.records if "leaky" in r.getMessage()]
    assert len(failures) == 2  # the first failure, then the retry
    for record in failures:
        text = record.getMessage()
        assert "Traceback (most recent call last):" in text and ", in leaky" in text
        assert "the mailer refused: token=****" in text
    assert token not in caplog.text
