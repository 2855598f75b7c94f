"""System checks on ATHM_SYNC, and get_settings() reading the same rules."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.core import checks
from django.core.exceptions import ImproperlyConfigured

from athm_sync.checks import check_settings
from athm_sync.conf import DEFAULTS, get_settings

GOOD = {
    "PUBLIC_TOKEN": "public-token",
    "PRIVATE_TOKEN": "private-token",
    "WEBHOOK_SECRET": "s" * 32,
}


def athm_messages(deploy: bool = True) -> list[checks.CheckMessage]:
    """What ``manage.py check [--deploy]`` reports for this app, through Django's own runner,
    in the order of :func:`athm_sync.conf.find_problems` (E002/E003 come from --deploy)."""
    found = checks.run_checks(tags=["athm_sync"], include_deployment_checks=deploy)
    ours = [m for m in found if m.id.startswith("athm_sync.")]
    return sorted(ours, key=lambda m: (m.id[10:11] != "E", m.id))


def ids(messages) -> list[str]:
    return [m.id for m in messages]


@pytest.fixture
def athm(settings):
    """Set ``ATHM_SYNC`` to GOOD overridden with the given keys; returns the check messages."""

    def configure(**overrides):
        settings.ATHM_SYNC = {**GOOD, **overrides}
        return athm_messages()

    return configure


def test_test_settings_produce_no_messages():
    assert athm_messages() == []
    assert check_settings() == []


def test_good_settings_produce_no_messages(athm):
    assert athm() == []


def test_check_is_registered_under_the_athm_sync_tag():
    assert check_settings in checks.registry.registry.get_checks()
    assert checks.registry.registry.tag_exists("athm_sync")


def test_not_a_dict_is_e001(settings):
    settings.ATHM_SYNC = [("PUBLIC_TOKEN", "x")]
    messages = athm_messages()
    assert ids(messages) == ["athm_sync.E001"]
    assert "must be a dict, not list" in messages[0].msg
    assert isinstance(messages[0], checks.Error)


def test_absent_setting_reports_missing_tokens(settings):
    del settings.ATHM_SYNC
    assert ids(athm_messages()) == ["athm_sync.E002", "athm_sync.E003"]


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        ({"PUBLIC_TOKEN": ""}, ["athm_sync.E002"]),
        ({"PUBLIC_TOKEN": "   "}, ["athm_sync.E002"]),
        ({"PUBLIC_TOKEN": None}, ["athm_sync.E002"]),
        ({"PRIVATE_TOKEN": ""}, ["athm_sync.E003"]),
        ({"PRIVATE_TOKEN": 12345}, ["athm_sync.E003"]),
        ({"PUBLIC_TOKEN": "", "PRIVATE_TOKEN": " "}, ["athm_sync.E002", "athm_sync.E003"]),
    ],
)
def test_blank_tokens(athm, overrides, expected):
    messages = athm(**overrides)
    assert ids(messages) == expected
    assert all("is missing or blank" in m.msg for m in messages)


def test_missing_tokens(settings):
    settings.ATHM_SYNC = {"WEBHOOK_SECRET": ""}
    messages = athm_messages()
    assert ids(messages) == ["athm_sync.E002", "athm_sync.E003"]
    assert "PUBLIC_TOKEN" in messages[0].msg
    assert "PRIVATE_TOKEN" in messages[1].msg


@pytest.mark.parametrize("name", ["API_BASE_URL", "REPORT_BASE_URL"])
@pytest.mark.parametrize(
    "url",
    [
        "ftp://payments.athmovil.com",
        "payments.athmovil.com",
        "https://",
        "",
        None,
        42,
        # Ports that passed the check and then failed on the first request.
        "http://127.0.0.1:abc",
        "http://127.0.0.1:99999",
    ],
)
def test_base_url_not_http_is_e004(athm, name, url):
    messages = athm(**{name: url})
    assert ids(messages) == ["athm_sync.E004"]
    assert name in messages[0].msg
    assert "http(s) URL" in messages[0].msg


@pytest.mark.parametrize(
    "url",
    [
        "https://payments.athmovil.com/",
        "https://payments.athmovil.com",
        "http://127.0.0.1:8765/",
        "http://localhost:8765",
        "http://[::1]:8765",
    ],
)
def test_base_url_accepted(athm, url):
    assert athm(API_BASE_URL=url, REPORT_BASE_URL=url) == []


def test_plain_http_on_a_non_loopback_host_is_w002(athm):
    messages = athm(API_BASE_URL="http://payments.athmovil.com")
    assert ids(messages) == ["athm_sync.W002"]
    assert isinstance(messages[0], checks.Warning)
    assert "unencrypted" in messages[0].msg


@pytest.mark.parametrize("secret", ["short", "s" * 31, 12345, None])
def test_short_webhook_secret_is_e005(athm, secret):
    messages = athm(WEBHOOK_SECRET=secret)
    assert ids(messages) == ["athm_sync.E005"]
    assert "at least 32 characters" in messages[0].msg


@pytest.mark.parametrize("secret", ["", "s" * 32, "s" * 64, "Ab0-_.~" * 5])
def test_webhook_secret_accepted(athm, secret):
    assert athm(WEBHOOK_SECRET=secret) == []


@pytest.mark.parametrize("secret", ["s" * 31 + "/", "s" * 31 + " ", "s" * 31 + "?", "é" * 32])
def test_a_webhook_secret_that_cannot_be_in_a_url_is_e005(athm, secret):
    messages = athm(WEBHOOK_SECRET=secret)
    assert ids(messages) == ["athm_sync.E005"]
    assert "part of the webhook's URL" in messages[0].msg


@pytest.mark.parametrize(
    ("previous", "message"),
    [
        ("short", "WEBHOOK_PREVIOUS_SECRET'] must be empty (webhooks off) or a string of at least"),
        ("p" * 31 + "/", "WEBHOOK_PREVIOUS_SECRET'] may hold only"),
    ],
)
def test_a_bad_previous_webhook_secret_is_e005(athm, previous, message):
    messages = athm(WEBHOOK_SECRET="s" * 32, WEBHOOK_PREVIOUS_SECRET=previous)
    assert ids(messages) == ["athm_sync.E005"] and message in messages[0].msg


def test_a_previous_webhook_secret_needs_a_current_one(athm):
    messages = athm(WEBHOOK_SECRET="", WEBHOOK_PREVIOUS_SECRET="p" * 32)
    assert ids(messages) == ["athm_sync.E005"]
    assert "WEBHOOK_SECRET is not" in messages[0].msg
    assert athm(WEBHOOK_SECRET="s" * 32, WEBHOOK_PREVIOUS_SECRET="p" * 32) == []


def test_a_webhook_secret_without_the_webhook_url_is_w004(athm, settings):
    settings.ROOT_URLCONF = "tests.urls_without_athm"
    messages = athm()
    assert ids(messages) == ["athm_sync.W004"]
    assert 'include("athm_sync.urls")' in messages[0].hint
    assert athm(WEBHOOK_SECRET="") == []  # webhooks off: nothing to route


@pytest.mark.parametrize(
    ("overrides", "text"),
    [
        ({"WORKERS": 0, "POOL_SIZE": 10}, "WORKERS'] must be a whole number of at least 1"),
        ({"WORKERS": 2.0}, "WORKERS'] must be a whole number"),
        ({"MAX_ATTEMPTS": 0}, "MAX_ATTEMPTS'] must be a whole number of at least 1, not 0"),
        ({"READ_TIMEOUT": -1}, "READ_TIMEOUT'] must be a number greater than 0, not -1"),
        ({"CONNECT_TIMEOUT": "3"}, "CONNECT_TIMEOUT'] must be a number greater than 0"),
        ({"RETRY_DEADLINE": True}, "RETRY_DEADLINE'] must be a number greater than 0, not True"),
        ({"PAYMENT_TIMEOUT": 601}, "PAYMENT_TIMEOUT'] must be a whole number from 120 to 600"),
        ({"PAYMENT_TIMEOUT": 119}, "PAYMENT_TIMEOUT'] must be a whole number from 120 to 600"),
        ({"MAX_AGE": "48h"}, "MAX_AGE'] must be a positive timedelta or number of seconds"),
        ({"MAX_AGE": timedelta(0)}, "MAX_AGE'] must be a positive timedelta"),
        ({"EXPIRY_GRACE": -5}, "EXPIRY_GRACE'] must be a positive timedelta"),
        # These used to crash the check with OverflowError instead of reporting it.
        ({"MAX_AGE": float("inf")}, "MAX_AGE'] must be a positive timedelta"),
        ({"MAX_AGE": 10**20}, "MAX_AGE'] must be a positive timedelta"),
        ({"EXPIRY_GRACE": 10**400}, "EXPIRY_GRACE'] must be a positive timedelta"),
        ({"AUTO_CAPTURE": "yes"}, "AUTO_CAPTURE'] must be True or False, not 'yes'"),
        ({"AUTO_CAPTURE": 1}, "AUTO_CAPTURE'] must be True or False, not 1"),
        ({"WEBHOOK_VERIFY_TIMEOUT": 0}, "WEBHOOK_VERIFY_TIMEOUT'] must be a number greater than 0"),
        ({"WEBHOOK_VERIFY_TIMEOUT": "4"}, "WEBHOOK_VERIFY_TIMEOUT'] must be a number"),
    ],
)
def test_bad_values_are_e006(athm, overrides, text):
    messages = athm(**overrides)
    assert ids(messages) == ["athm_sync.E006"], [m.msg for m in messages]
    assert text in messages[0].msg
    assert isinstance(messages[0], checks.Error)


@pytest.mark.parametrize(
    "overrides",
    [
        {"PAYMENT_TIMEOUT": 120},
        {"PAYMENT_TIMEOUT": 600},
        {"MAX_AGE": 3600, "EXPIRY_GRACE": 0.5},
        {"MAX_AGE": timedelta(days=3)},
        {"AUTO_CAPTURE": False},
        {"READ_TIMEOUT": 1, "CONNECT_TIMEOUT": 0.5},
        {"WORKERS": 1, "POOL_SIZE": 1},
        {"WEBHOOK_VERIFY_TIMEOUT": 2.5},
    ],
)
def test_good_values_accepted(athm, overrides):
    assert athm(**overrides) == []


def test_pool_size_zero_is_e006(athm):
    # 0 is also smaller than WORKERS, so W003 follows the error; the error comes first.
    messages = athm(POOL_SIZE=0)
    assert ids(messages) == ["athm_sync.E006", "athm_sync.W003"]
    assert "POOL_SIZE'] must be a whole number of at least 1, not 0" in messages[0].msg


def test_unknown_key_is_w001(athm):
    messages = athm(PUBLIC_TOKN="typo", WORKER=3)
    assert ids(messages) == ["athm_sync.W001"]
    assert "PUBLIC_TOKN" in messages[0].msg
    assert "WORKER" in messages[0].msg
    assert isinstance(messages[0], checks.Warning)


def test_pool_smaller_than_workers_is_w003(athm):
    messages = athm(WORKERS=8, POOL_SIZE=4)
    assert ids(messages) == ["athm_sync.W003"]
    assert "(4) is smaller than WORKERS (8)" in messages[0].msg


def test_several_problems_reported_together_errors_as_errors(athm):
    messages = athm(
        PUBLIC_TOKEN="",
        API_BASE_URL="ftp://x",
        WEBHOOK_SECRET="short",
        WORKERS=0,
        AUTO_CAPTURE="yes",
        BOGUS=1,
        POOL_SIZE=2,
    )
    assert ids(messages) == [
        "athm_sync.E002",
        "athm_sync.E004",
        "athm_sync.E005",
        "athm_sync.E006",
        "athm_sync.E006",
        "athm_sync.W001",
    ]


BAD_CONFIGS = [
    {"PUBLIC_TOKEN": ""},
    {"PRIVATE_TOKEN": None},
    {"API_BASE_URL": "ftp://x"},
    {"API_BASE_URL": "http://example.com"},
    {"WEBHOOK_SECRET": "short"},
    {"WORKERS": 0},
    {"MAX_ATTEMPTS": 0},
    {"READ_TIMEOUT": -1},
    {"PAYMENT_TIMEOUT": 601},
    {"MAX_AGE": "48h"},
    {"AUTO_CAPTURE": "yes"},
    {"UNKNOWN": 1},
    {"WORKERS": 8, "POOL_SIZE": 2},
]


@pytest.mark.parametrize("overrides", BAD_CONFIGS)
def test_every_message_has_a_hint_and_a_known_id(athm, overrides):
    messages = athm(**overrides)
    assert messages
    for message in messages:
        assert message.hint and message.hint.strip(), message.id
        assert message.id.split(".")[1] in {
            "E001",
            "E002",
            "E003",
            "E004",
            "E005",
            "E006",
            "W001",
            "W002",
            "W003",
        }


def test_e001_has_a_hint(settings):
    settings.ATHM_SYNC = "not a dict"
    (message,) = athm_messages()
    assert message.hint


def test_messages_never_show_the_tokens(athm):
    messages = athm(
        PUBLIC_TOKEN="pub-secret-value", PRIVATE_TOKEN="priv-secret-value", WORKERS=0, X=1
    )
    text = " ".join(f"{m.msg} {m.hint}" for m in messages)
    assert "secret-value" not in text


# --- get_settings() --------------------------------------------------------------------------


def test_get_settings_with_the_test_settings():
    conf = get_settings()
    assert conf.public_token == "sandbox-public-token"
    assert conf.api_base_url == "http://127.0.0.1:9"
    assert conf.max_attempts == 3
    assert conf.payment_timeout == DEFAULTS["PAYMENT_TIMEOUT"]
    assert conf.max_age == timedelta(hours=48)
    assert conf.auto_capture is True


def test_get_settings_strips_trailing_slashes_and_spaces(settings):
    settings.ATHM_SYNC = {
        **GOOD,
        "PUBLIC_TOKEN": " public-token ",
        "API_BASE_URL": "https://payments.athmovil.com/",
        "REPORT_BASE_URL": " http://127.0.0.1:8765// ",
    }
    conf = get_settings()
    assert conf.api_base_url == "https://payments.athmovil.com"
    assert conf.report_base_url == "http://127.0.0.1:8765"
    assert conf.public_token == "public-token"


def test_get_settings_converts_seconds_to_timedeltas(settings):
    settings.ATHM_SYNC = {**GOOD, "MAX_AGE": 3600, "EXPIRY_GRACE": 30.5}
    conf = get_settings()
    assert conf.max_age == timedelta(hours=1)
    assert conf.expiry_grace == timedelta(seconds=30.5)


@pytest.mark.parametrize(
    ("overrides", "text"),
    [
        ({"PUBLIC_TOKEN": ""}, "ATHM_SYNC['PUBLIC_TOKEN'] is missing or blank."),
        ({"API_BASE_URL": "ftp://x"}, "ATHM_SYNC['API_BASE_URL'] must be an http(s) URL"),
        ({"WEBHOOK_SECRET": "short"}, "ATHM_SYNC['WEBHOOK_SECRET'] must be empty"),
        ({"WORKERS": 0}, "ATHM_SYNC['WORKERS'] must be a whole number of at least 1, not 0."),
        ({"PAYMENT_TIMEOUT": 601}, "must be a whole number from 120 to 600, not 601."),
        ({"MAX_AGE": "48h"}, "ATHM_SYNC['MAX_AGE'] must be a positive timedelta"),
        ({"AUTO_CAPTURE": "yes"}, "ATHM_SYNC['AUTO_CAPTURE'] must be True or False"),
    ],
)
def test_get_settings_raises_improperly_configured_with_the_message(settings, overrides, text):
    settings.ATHM_SYNC = {**GOOD, **overrides}
    with pytest.raises(ImproperlyConfigured) as excinfo:
        get_settings()
    assert text in str(excinfo.value)


def test_get_settings_raises_for_a_non_dict(settings):
    settings.ATHM_SYNC = None
    with pytest.raises(ImproperlyConfigured, match="must be a dict, not NoneType"):
        get_settings()


@pytest.mark.parametrize(
    "overrides",
    [
        {"UNKNOWN": 1},
        {"API_BASE_URL": "http://payments.example.com"},
        {"WORKERS": 8, "POOL_SIZE": 2},
    ],
)
def test_get_settings_does_not_raise_for_warnings(settings, overrides):
    settings.ATHM_SYNC = {**GOOD, **overrides}
    get_settings()


def test_settings_repr_hides_the_tokens(settings):
    settings.ATHM_SYNC = {**GOOD, "PRIVATE_TOKEN": "priv-secret-value"}
    conf = get_settings()
    assert "secret" not in repr(conf)
    assert "private" not in repr(conf).lower()


def test_missing_tokens_block_nothing_but_check_deploy(settings):
    """CI, a new developer, a build step's migrate: no tokens, and no error, until --deploy."""
    settings.ATHM_SYNC = {"WEBHOOK_SECRET": ""}
    assert ids(athm_messages(deploy=False)) == []
    assert ids(athm_messages(deploy=True)) == ["athm_sync.E002", "athm_sync.E003"]


def test_without_tokens_migrate_and_check_run_and_athm_sync_refuses(tmp_path):
    from tests.commands import run_process

    (tmp_path / "no_tokens.py").write_text(
        "from tests.settings import *  # noqa: F403\n"
        f"DATABASES = {{'default': {{'ENGINE': 'django.db.backends.sqlite3', "
        f"'NAME': {str(tmp_path / 'db.sqlite3')!r}}}}}\n"
        "ATHM_SYNC = {}\n"
    )
    options = {"settings": "no_tokens", "extra_path": tmp_path}

    assert run_process("migrate", "-v", "0", **options).returncode == 0
    assert run_process("check", **options).returncode == 0
    deploy = run_process("check", "--deploy", "--tag", "athm_sync", **options)
    assert deploy.returncode == 1 and "athm_sync.E002" in deploy.stderr
    refused = run_process("athm_sync", **options)
    assert refused.returncode == 2
    assert refused.stderr.startswith("athm_sync: error: bad ATHM_SYNC setting:")
    assert "PUBLIC_TOKEN" in refused.stderr and refused.stderr.count("\n") == 1
