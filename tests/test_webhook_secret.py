"""The webhook secret stays out of every log the app controls, and can be rotated.

Every record any logger emits while the view answers is captured (the root logger at DEBUG,
Django's ``django.request`` included) and searched for the secret, with the project's real
middleware (``CommonMiddleware`` with ``APPEND_SLASH``), under ``DEBUG`` too.
"""

from __future__ import annotations

import json
import logging

import pytest
from django.test import Client

from athm_sync.models import Payment, WebhookEvent

pytestmark = pytest.mark.django_db(transaction=True)

SECRET = "w" * 40  # tests/settings.py
OLD_SECRET = "o" * 40
PREFIX = "/athm/webhook/"


class Everything(logging.Handler):
    """Keeps every record emitted anywhere, fully formatted, with its ``request`` if any."""

    def __init__(self) -> None:
        super().__init__(level=logging.DEBUG)
        self.texts: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        request = getattr(record, "request", None)
        extra = f" {request.get_full_path()} {request.META}" if request is not None else ""
        self.texts.append(f"{record.name} {record.levelname} {record.getMessage()}{extra}")


@pytest.fixture
def logs():
    """Every record of every logger, at every level, while the test runs."""
    handler = Everything()
    root = logging.getLogger()
    loggers = [root, logging.getLogger("athm_sync"), logging.getLogger("django")]
    levels = [logger.level for logger in loggers]
    root.addHandler(handler)
    for logger in loggers:
        logger.setLevel(logging.DEBUG)
    try:
        yield handler
    finally:
        root.removeHandler(handler)
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)


def assert_no_secret(logs: Everything, *secrets: str) -> None:
    assert logs.texts, "nothing was logged: the test would prove nothing"
    for text in logs.texts:
        for secret in secrets or (SECRET,):
            assert secret not in text, text


def post(client: Client, path: str, body: bytes | str = b"{}", **extra):
    return client.post(path, body, content_type="application/json", **extra)


@pytest.mark.parametrize("debug", [False, True])
@pytest.mark.parametrize(
    ("method", "path", "body", "status"),
    [
        ("get", f"{PREFIX}{SECRET}/", None, 405),
        ("post", f"{PREFIX}{SECRET}/", b"not json", 400),
        ("post", f"{PREFIX}{SECRET}/", b'{"transactionType": "meteor"}', 400),
        ("post", f"{PREFIX}{SECRET}/", b"[" * (64 * 1024 + 10), 413),
        ("post", f"{PREFIX}{SECRET}", b"not json", 400),  # no trailing slash: still the view
        ("post", f"{PREFIX}{SECRET}/more/", b"{}", 404),
        ("post", f"{PREFIX}{SECRET}x/", b"{}", 404),  # a near miss of the secret
        ("get", f"{PREFIX}{SECRET}", None, 405),
    ],
)
def test_no_answer_of_the_view_logs_the_secret(
    athm_settings, settings, logs, debug, method, path, body, status
):
    settings.DEBUG = debug
    client = Client(raise_request_exception=False)

    response = client.get(path) if method == "get" else post(client, path, body)

    assert response.status_code == status
    assert SECRET.encode() not in response.content
    assert_no_secret(logs)
    assert any("webhook/****" in text and str(status) in text for text in logs.texts)


def test_a_post_without_the_trailing_slash_reaches_the_view_even_under_debug(
    athm_settings, settings, logs
):
    """APPEND_SLASH would answer a POST to a slash-less URL with a 500 under DEBUG, whose page
    shows the URL; the view takes it instead, and applies a genuine webhook."""
    settings.DEBUG = True
    sandbox = athm_settings
    ecommerce_id, _ = sandbox.create_payment("10.00")
    Payment.objects.track(ecommerce_id, total="10.00")
    sandbox.complete(ecommerce_id)
    client = Client(raise_request_exception=False)

    response = post(client, f"{PREFIX}{SECRET}", json.dumps(sandbox.webhook_payload(ecommerce_id)))

    assert response.status_code == 200 and response.json()["outcome"] == "applied"
    assert Payment.objects.get().status == "COMPLETED"
    assert_no_secret(logs)


def test_two_secrets_are_accepted_while_rotating(athm_settings, settings, logs):
    settings.ATHM_SYNC = {
        **settings.ATHM_SYNC,
        "WEBHOOK_SECRET": SECRET,
        "WEBHOOK_PREVIOUS_SECRET": OLD_SECRET,
    }
    sandbox = athm_settings
    client = Client()
    answers = {}
    for secret in (SECRET, OLD_SECRET):
        ecommerce_id, _ = sandbox.create_payment("10.00")
        Payment.objects.track(ecommerce_id, total="10.00")
        sandbox.complete(ecommerce_id)
        body = json.dumps(sandbox.webhook_payload(ecommerce_id))
        answers[secret] = post(client, f"{PREFIX}{secret}/", body).json()["outcome"]

    assert answers == {SECRET: "applied", OLD_SECRET: "applied"}
    assert WebhookEvent.objects.count() == 2
    assert post(client, f"{PREFIX}{'x' * 40}/").status_code == 404
    assert any("WEBHOOK_PREVIOUS_SECRET" in text for text in logs.texts)
    assert_no_secret(logs, SECRET, OLD_SECRET)

    settings.ATHM_SYNC = {**settings.ATHM_SYNC, "WEBHOOK_PREVIOUS_SECRET": ""}  # rotation done
    assert post(client, f"{PREFIX}{OLD_SECRET}/").status_code == 404


def test_without_tokens_the_view_asks_ath_movil_to_send_again_later(settings, logs):
    settings.ATHM_SYNC = {**settings.ATHM_SYNC, "PUBLIC_TOKEN": ""}
    client = Client()

    right = post(client, f"{PREFIX}{SECRET}/", b"{}")
    wrong = post(client, f"{PREFIX}{'x' * 40}/", b"{}")

    assert right.status_code == 503 and "try again later" in right.json()["error"]
    assert "PUBLIC_TOKEN" not in right.content.decode()  # strangers learn nothing
    assert wrong.status_code == 404
    assert not WebhookEvent.objects.exists()
    assert_no_secret(logs)


def test_mid_rotation_the_old_url_is_asked_to_send_again_later_too(settings, logs):
    settings.ATHM_SYNC = {
        **settings.ATHM_SYNC,
        "PUBLIC_TOKEN": "",
        "WEBHOOK_PREVIOUS_SECRET": OLD_SECRET,
    }
    client = Client()

    old = post(client, f"{PREFIX}{OLD_SECRET}/", b"{}")
    wrong = post(client, f"{PREFIX}{'x' * 40}/", b"{}")

    assert old.status_code == 503 and "try again later" in old.json()["error"]
    assert wrong.status_code == 404
    assert not WebhookEvent.objects.exists()
    assert_no_secret(logs, SECRET, OLD_SECRET)
