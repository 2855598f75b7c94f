"""``manage.py athm_subscribe`` against the sandbox: the URL it registers, the events, the
one-line refusals, and that the webhook secret is never printed whole."""

from __future__ import annotations

import io
import subprocess

import pytest

from athm_sync.management.commands.athm_subscribe import Command, Listener
from tests import commands
from tests.commands import call

SECRET = "w" * 40  # tests/settings.py
MASKED = "wwww…"
WEBHOOK_PATH = f"/athm/webhook/{SECRET}/"
ALL_OFF = {
    "paymentReceivedEvent": False,
    "refundSentEvent": False,
    "donationReceivedEvent": False,
    "ecommercePaymentReceivedEvent": False,
    "ecommercePaymentCancelledEvent": False,
    "ecommercePaymentExpiredEvent": False,
}
DEFAULT_FLAGS = {
    **ALL_OFF,
    "refundSentEvent": True,
    "ecommercePaymentReceivedEvent": True,
    "ecommercePaymentCancelledEvent": True,
    "ecommercePaymentExpiredEvent": True,
}

# A URLconf without athm_sync.urls, for the "not included" refusal (ROOT_URLCONF = this module).
urlpatterns: list = []


def run(*args: str) -> tuple[int, str, str]:
    """Run the command in this process; returns (exit code, stdout, stderr)."""
    return call("athm_subscribe", *args)


def run_process(*args: str, **options) -> subprocess.CompletedProcess[str]:
    """``python -m django athm_subscribe ...`` as a real process (see ``tests.commands``)."""
    return commands.run_process("athm_subscribe", *args, **options)


def assert_one_error_line(err: str, *fragments: str) -> str:
    """``err`` is exactly one ``athm_subscribe: error:`` line holding every fragment."""
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert "Traceback" not in err
    line = lines[0]
    assert line.startswith("athm_subscribe: error: "), line
    for fragment in fragments:
        assert fragment in line, line
    assert SECRET not in err
    return line


def subscribe_calls(sandbox) -> int:
    return sandbox.counts().get("webhookSubscribe", 0)


# --- registering ---------------------------------------------------------------------------


def test_registers_the_webhook_url_with_the_default_events(athm_settings):
    code, out, err = run("https://shop.example.com")
    assert (code, err) == (0, "")
    assert athm_settings.state.subscription == {
        "listenerURL": f"https://shop.example.com{WEBHOOK_PATH}",
        **DEFAULT_FLAGS,
    }
    assert subscribe_calls(athm_settings) == 1
    assert out.splitlines() == [
        f"athm_subscribe: registered https://shop.example.com/athm/webhook/{MASKED}/",
        f"  with ATH Móvil at {athm_settings.url}",
        "  events on:  completed, cancelled, expired, refund",
        "  events off: payment, donation",
    ]
    assert SECRET not in out + err


def test_running_it_again_replaces_the_subscription(athm_settings):
    assert run("https://old.example.com")[0] == 0
    assert run("https://new.example.com", "--events", "completed")[0] == 0
    assert athm_settings.state.subscription == {
        "listenerURL": f"https://new.example.com{WEBHOOK_PATH}",
        **ALL_OFF,
        "ecommercePaymentReceivedEvent": True,
    }


@pytest.mark.parametrize(
    ("site_url", "listener"),
    [
        ("https://example.com/shop", f"https://example.com/shop{WEBHOOK_PATH}"),
        ("https://example.com/shop/", f"https://example.com/shop{WEBHOOK_PATH}"),
        ("https://example.com/a/b//", f"https://example.com/a/b{WEBHOOK_PATH}"),
        ("https://example.com/", f"https://example.com{WEBHOOK_PATH}"),
        ("https://example.com:8443", f"https://example.com:8443{WEBHOOK_PATH}"),
        ("  https://example.com  ", f"https://example.com{WEBHOOK_PATH}"),
        ("HTTPS://Example.com", f"https://Example.com{WEBHOOK_PATH}"),
    ],
)
def test_the_webhook_path_goes_after_the_site_url_and_its_path_prefix(
    athm_settings, site_url, listener
):
    code, out, err = run(site_url)
    assert (code, err) == (0, "")
    assert athm_settings.state.subscription["listenerURL"] == listener
    masked = listener.replace(SECRET, MASKED)
    assert f"registered {masked}\n" in out
    assert SECRET not in out


@pytest.mark.parametrize(
    ("site_url", "listener"),
    [
        (f"https://shop.example.com{WEBHOOK_PATH}", f"https://shop.example.com{WEBHOOK_PATH}"),
        (
            f"https://shop.example.com{WEBHOOK_PATH.rstrip('/')}",
            f"https://shop.example.com{WEBHOOK_PATH}",
        ),
        (f"https://example.com/shop{WEBHOOK_PATH}", f"https://example.com/shop{WEBHOOK_PATH}"),
    ],
)
def test_a_url_that_already_ends_with_the_webhook_path_is_not_appended_twice(
    athm_settings, site_url, listener
):
    code, out, err = run(site_url)
    assert (code, err) == (0, "")
    assert athm_settings.state.subscription["listenerURL"] == listener
    assert SECRET not in out


@pytest.mark.parametrize(
    "site_url",
    ["https://shop.example.com/athm/webhook/old-secret/", "https://shop.example.com/athm/webhook/"],
)
def test_a_url_ending_with_another_webhook_path_is_refused(athm_settings, site_url):
    code, out, err = run(site_url)
    assert (code, out) == (2, "")
    line = assert_one_error_line(err, "already ends with a webhook path")
    assert "old-secret" not in line
    assert athm_settings.state.subscription is None


def test_http_is_refused_without_sandbox_and_nothing_is_sent(athm_settings):
    code, out, err = run("http://127.0.0.1:8000")
    assert (code, out) == (2, "")
    assert_one_error_line(err, "must be https", "--sandbox")
    assert subscribe_calls(athm_settings) == 0
    assert athm_settings.state.subscription is None


def test_http_is_allowed_with_sandbox(athm_settings):
    code, out, err = run("http://127.0.0.1:8000", "--sandbox")
    assert (code, err) == (0, "")
    assert f"registered http://127.0.0.1:8000/athm/webhook/{MASKED}/" in out
    assert athm_settings.state.subscription == {
        "listenerURL": f"http://127.0.0.1:8000{WEBHOOK_PATH}",
        **DEFAULT_FLAGS,
    }


def test_sandbox_does_not_allow_http_with_the_real_ath_movil(settings, sandbox):
    settings.ATHM_SYNC = {**settings.ATHM_SYNC, "REPORT_BASE_URL": "https://www.athmovil.com"}
    code, out, err = run("http://127.0.0.1:8000", "--sandbox")
    assert (code, out) == (2, "")
    assert_one_error_line(err, "--sandbox allows http only with the sandbox server")
    assert subscribe_calls(sandbox) == 0


def test_verbosity_0_prints_nothing_on_success(athm_settings):
    assert run("https://shop.example.com", "-v", "0") == (0, "", "")
    assert athm_settings.state.subscription is not None


# --- events ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("events", "flags", "on", "off"),
    [
        (
            ["--events", "completed,refund"],
            {"ecommercePaymentReceivedEvent": True, "refundSentEvent": True},
            "completed, refund",
            "cancelled, expired, payment, donation",
        ),
        (
            ["--events", " Expired , CANCELLED,,"],
            {"ecommercePaymentExpiredEvent": True, "ecommercePaymentCancelledEvent": True},
            "cancelled, expired",
            "completed, refund, payment, donation",
        ),
        (
            ["--events", "refund", "--events", "completed,refund"],
            {"ecommercePaymentReceivedEvent": True, "refundSentEvent": True},
            "completed, refund",
            "cancelled, expired, payment, donation",
        ),
        (
            ["--events", "completed,cancelled,expired,refund,payment,donation"],
            {**DEFAULT_FLAGS, "paymentReceivedEvent": True, "donationReceivedEvent": True},
            "completed, cancelled, expired, refund, payment, donation",
            "(none)",
        ),
    ],
)
def test_events_turns_on_exactly_the_named_events(athm_settings, events, flags, on, off):
    code, out, err = run("https://shop.example.com", *events)
    assert (code, err) == (0, "")
    assert athm_settings.state.subscription == {
        "listenerURL": f"https://shop.example.com{WEBHOOK_PATH}",
        **ALL_OFF,
        **flags,
    }
    assert f"  events on:  {on}\n" in out
    assert f"  events off: {off}\n" in out


def test_payment_and_donation_events_come_with_a_note(athm_settings):
    code, out, _ = run("https://shop.example.com", "--events", "completed,donation,payment")
    assert code == 0
    assert "note: athm_sync stores payment and donation events but does not act on them" in out
    assert "note:" not in run("https://shop.example.com")[1]


@pytest.mark.parametrize(
    ("events", "fragments"),
    [
        ("complete,refunds", ("unknown event(s) 'complete', 'refunds'", "known events: completed")),
        ("", ("--events is empty",)),
        (" , ,", ("--events is empty",)),
    ],
)
def test_bad_event_lists_are_refused(athm_settings, events, fragments):
    code, out, err = run("https://shop.example.com", "--events", events)
    assert (code, out) == (2, "")
    assert_one_error_line(err, *fragments)
    assert subscribe_calls(athm_settings) == 0


# --- dry run ------------------------------------------------------------------------------


def test_dry_run_prints_the_same_and_sends_nothing(athm_settings):
    code, out, err = run("https://example.com/shop", "--dry-run", "--events", "completed")
    assert (code, err) == (0, "")
    assert out.splitlines() == [
        "athm_subscribe: dry run, nothing sent: would register "
        f"https://example.com/shop/athm/webhook/{MASKED}/",
        f"  with ATH Móvil at {athm_settings.url}",
        "  events on:  completed",
        "  events off: cancelled, expired, refund, payment, donation",
    ]
    assert subscribe_calls(athm_settings) == 0
    assert athm_settings.connections() == 0
    assert athm_settings.state.subscription is None


def test_dry_run_still_checks_the_settings(settings, sandbox):
    settings.ATHM_SYNC = {**settings.ATHM_SYNC, "WEBHOOK_SECRET": ""}
    code, out, err = run("https://shop.example.com", "--dry-run")
    assert (code, out) == (2, "")
    assert_one_error_line(err, "set ATHM_SYNC['WEBHOOK_SECRET'] first")


# --- refusals -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("site_url", "fragments"),
    [
        ("https://", ("has no host",)),
        ("https:///shop", ("has no host",)),
        ("shop.example.com", ("must be an absolute https URL", "not no scheme")),
        ("ftp://shop.example.com", ("must be an absolute https URL", "not ftp://")),
        ("https://shop.example.com/?next=1", ("must not have a query",)),
        ("https://shop.example.com/?", ("must not have a query",)),
        ("https://shop.example.com/#top", ("fragment",)),
        ("https://shop.example.com:99999", ("invalid port",)),
        ("https://user:pw@shop.example.com", ("must not carry a user or password",)),
        ("https://shop.example.com/my shop", ("contains spaces",)),
        ("   ", ("SITE_URL is empty",)),
        (f"https://shop.example.com{WEBHOOK_PATH}?x=1", ("must not have a query",)),
    ],
)
def test_bad_site_urls_are_refused_and_nothing_is_sent(athm_settings, site_url, fragments):
    code, out, err = run(site_url)
    assert (code, out) == (2, "")
    line = assert_one_error_line(err, *fragments)
    assert "pw" not in line
    assert subscribe_calls(athm_settings) == 0


def test_an_empty_webhook_secret_is_refused(settings, sandbox):
    settings.ATHM_SYNC = {**settings.ATHM_SYNC, "WEBHOOK_SECRET": ""}
    code, out, err = run("https://shop.example.com")
    assert (code, out) == (2, "")
    assert_one_error_line(
        err, "set ATHM_SYNC['WEBHOOK_SECRET'] first", "the webhook view is off without it"
    )
    assert subscribe_calls(sandbox) == 0


def test_a_urlconf_without_athm_sync_urls_is_refused(settings, athm_settings):
    settings.ROOT_URLCONF = __name__
    code, out, err = run("https://shop.example.com")
    assert (code, out) == (2, "")
    assert_one_error_line(
        err, "does not include athm_sync.urls", 'path("athm/", include("athm_sync.urls"))'
    )
    assert subscribe_calls(athm_settings) == 0


@pytest.mark.parametrize(
    ("changes", "fragments"),
    [
        ({"WORKERS": 0}, ("bad ATHM_SYNC setting:", "WORKERS")),
        ({"WEBHOOK_SECRET": "short"}, ("bad ATHM_SYNC setting:", "WEBHOOK_SECRET")),
        ({"PRIVATE_TOKEN": ""}, ("bad ATHM_SYNC setting:", "ATHM_SYNC['PRIVATE_TOKEN']")),
        ({"PUBLIC_TOKEN": "  "}, ("bad ATHM_SYNC setting:", "ATHM_SYNC['PUBLIC_TOKEN']")),
        ({"REPORT_BASE_URL": "ftp://x"}, ("bad ATHM_SYNC setting:", "REPORT_BASE_URL")),
    ],
)
def test_bad_settings_are_refused(settings, athm_settings, changes, fragments):
    settings.ATHM_SYNC = {**settings.ATHM_SYNC, **changes}
    code, out, err = run("https://shop.example.com")
    assert (code, out) == (2, "")
    assert_one_error_line(err, *fragments)
    assert subscribe_calls(athm_settings) == 0


def test_rejected_credentials(settings, athm_settings):
    settings.ATHM_SYNC = {**settings.ATHM_SYNC, "PRIVATE_TOKEN": "not-the-private-token"}
    code, out, err = run("https://shop.example.com")
    assert (code, out) == (2, "")
    line = assert_one_error_line(err, "ATH Móvil rejected the credentials")
    assert "not-the-private-token" not in line
    assert athm_settings.state.subscription is None


def test_rejected_credentials_answered_with_http_401(athm_settings):
    athm_settings.inject_fault("auth", "webhookSubscribe")
    code, out, err = run("https://shop.example.com")
    assert (code, out) == (2, "")
    assert_one_error_line(err, "ATH Móvil rejected the credentials", "BTRA_0401")
    assert subscribe_calls(athm_settings) == 1  # not retried


def test_unreachable(settings):
    # tests/settings.py points at 127.0.0.1:9, where nothing listens.
    settings.ATHM_SYNC = {**settings.ATHM_SYNC, "MAX_ATTEMPTS": 2}
    code, out, err = run(f"https://shop.example.com{WEBHOOK_PATH}")
    assert (code, out) == (2, "")
    assert_one_error_line(
        err, "ATH Móvil is unreachable at http://127.0.0.1:9", "could not connect"
    )


def test_failing_after_retries(athm_settings):
    athm_settings.inject_fault("http503", "webhookSubscribe", times=100)
    code, out, err = run("https://shop.example.com")
    assert (code, out) == (2, "")
    assert_one_error_line(err, "ATH Móvil did not register the listener", "try again later")
    assert subscribe_calls(athm_settings) == 3  # MAX_ATTEMPTS in tests/settings.py
    assert athm_settings.state.subscription is None


def test_a_transient_failure_is_retried(athm_settings):
    athm_settings.inject_fault("http503", "webhookSubscribe")
    code, _, err = run("https://shop.example.com")
    assert (code, err) == (0, "")
    assert athm_settings.state.subscription["listenerURL"].endswith(WEBHOOK_PATH)


def test_ath_movil_answer_message_is_printed_with_the_secret_masked():
    # The sandbox answers without a message; the real API may send one, maybe echoing the URL.
    stdout = io.StringIO()
    command = Command(stdout=stdout)
    command._secrets = {SECRET}
    listener = Listener(url="u", masked="https://shop.example.com/athm/webhook/wwww…/", token="t")

    class Conf:
        report_base_url = "https://www.athmovil.com"

    command._print(
        listener,
        ("completed",),
        Conf(),  # type: ignore[arg-type]
        {"status": "success", "message": f"Webhook saved  for /athm/webhook/{SECRET}/"},
        dry_run=False,
    )
    out = stdout.getvalue()
    assert f"  ATH Móvil says: Webhook saved for /athm/webhook/{MASKED}/" in out
    assert SECRET not in out


# --- as a real process: the exit status and the one stderr line -------------------------------


def test_a_real_process_registers_and_exits_0(sandbox):
    result = run_process("https://shop.example.com/", sandbox_url=sandbox.url)
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    assert f"registered https://shop.example.com/athm/webhook/{MASKED}/" in result.stdout
    assert SECRET not in result.stdout
    assert sandbox.state.subscription == {
        "listenerURL": f"https://shop.example.com{WEBHOOK_PATH}",
        **DEFAULT_FLAGS,
    }


@pytest.mark.parametrize(
    ("args", "fragments"),
    [
        (["http://shop.example.com"], ("must be https",)),
        ([f"http://shop.example.com{WEBHOOK_PATH}"], ("must be https",)),
        (["https://shop.example.com?a=b"], ("must not have a query",)),
        (["https://shop.example.com", "--events", "completed,refunds"], ("'refunds'",)),
        (["https://shop.example.com", "--events", ","], ("--events is empty",)),
        (["https://shop.example.com", "--every-day"], ("unrecognized arguments: --every-day",)),
        ([], ("the following arguments are required: SITE_URL",)),
    ],
)
def test_a_real_process_refuses_with_one_line_and_exit_2(sandbox, args, fragments):
    result = run_process(*args, sandbox_url=sandbox.url)
    assert result.returncode == 2, result.stderr
    assert result.stdout == ""
    assert_one_error_line(result.stderr, *fragments)
    assert subscribe_calls(sandbox) == 0
    assert sandbox.state.subscription is None


def test_a_real_process_says_unreachable_in_one_line_without_retry_warnings():
    result = run_process(f"https://shop.example.com{WEBHOOK_PATH}")  # at 127.0.0.1:9
    assert result.returncode == 2, result.stderr
    assert result.stdout == ""
    assert_one_error_line(result.stderr, "ATH Móvil is unreachable")


def test_a_real_process_says_rejected_credentials_in_one_line(sandbox):
    sandbox.inject_fault("auth", "webhookSubscribe")
    result = run_process("https://shop.example.com", sandbox_url=sandbox.url)
    assert result.returncode == 2, result.stderr
    assert result.stdout == ""
    assert_one_error_line(result.stderr, "ATH Móvil rejected the credentials")


@pytest.mark.parametrize(
    ("settings_lines", "fragments"),
    [
        (['ATHM_SYNC = {**ATHM_SYNC, "WORKERS": 0}'], ("bad ATHM_SYNC setting:", "WORKERS")),
        (
            ['ATHM_SYNC = {**ATHM_SYNC, "PRIVATE_TOKEN": ""}'],
            ("bad ATHM_SYNC setting:", "PRIVATE_TOKEN"),
        ),
        (['ATHM_SYNC = {**ATHM_SYNC, "WEBHOOK_SECRET": ""}'], ("WEBHOOK_SECRET'] first",)),
        (['ROOT_URLCONF = "urls_without_athm"'], ("does not include athm_sync.urls",)),
    ],
)
def test_a_real_process_with_bad_settings_exits_2_with_one_line(
    tmp_path, sandbox, settings_lines, fragments
):
    """Not the system checks' block and exit 1: the command validates ATHM_SYNC itself."""
    (tmp_path / "urls_without_athm.py").write_text("urlpatterns = []\n")
    (tmp_path / "subscribe_settings.py").write_text(
        "\n".join(["from tests.settings import *  # noqa: F403", *settings_lines, ""])
    )
    result = run_process(
        "https://shop.example.com",
        sandbox_url=sandbox.url,
        extra_path=tmp_path,
        settings="subscribe_settings",
    )
    assert result.returncode == 2, result.stderr
    assert result.stdout == ""
    assert_one_error_line(result.stderr, *fragments)
    assert subscribe_calls(sandbox) == 0


def test_while_rotating_the_new_secret_is_registered_and_neither_is_printed(
    athm_settings, settings
):
    old = "o" * 40
    settings.ATHM_SYNC = {**settings.ATHM_SYNC, "WEBHOOK_PREVIOUS_SECRET": old}
    code, out, err = run(f"https://shop.example.com/athm/webhook/{old}/", "--sandbox")
    assert code == 2 and old not in out + err  # the old URL is not registered again
    code, out, err = run("https://shop.example.com")
    assert code == 0, err
    assert athm_settings.state.subscription["listenerURL"].endswith(f"/athm/webhook/{SECRET}/")
    assert SECRET not in out + err and old not in out + err
