"""The ``ATHM_SYNC`` settings dict: defaults, validation and the typed view the app reads.

Every part of the app reads settings through :func:`get_settings`, so a value is validated in
one place. ``manage.py check`` reports the same problems through :mod:`athm_sync.checks`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import timedelta
from typing import Any
from urllib.parse import urlsplit

from django.conf import settings as django_settings
from django.core.exceptions import ImproperlyConfigured

SETTING_NAME = "ATHM_SYNC"
MIN_WEBHOOK_SECRET_LENGTH = 32
# ATH Móvil accepts a payment timeout from 120 to 600 seconds.
MIN_PAYMENT_TIMEOUT, MAX_PAYMENT_TIMEOUT = 120, 600

DEFAULTS: dict[str, Any] = {
    "PUBLIC_TOKEN": "",
    "PRIVATE_TOKEN": "",
    "API_BASE_URL": "https://payments.athmovil.com",
    "REPORT_BASE_URL": "https://www.athmovil.com",
    "WEBHOOK_SECRET": "",
    # The secret being replaced, still accepted while ATH Móvil switches to the new URL.
    "WEBHOOK_PREVIOUS_SECRET": "",
    # HTTP, per attempt: seconds to connect, and for the whole answer (connecting, headers
    # and body included, however slowly it comes).
    "CONNECT_TIMEOUT": 3.05,
    "READ_TIMEOUT": 15.0,
    # Retries of transient failures: attempts per call and the total seconds one call may take
    # (all attempts and the waits between them).
    "MAX_ATTEMPTS": 4,
    "RETRY_DEADLINE": 30.0,
    "POOL_SIZE": 10,
    "WORKERS": 4,
    # Timeout given to ATH Móvil for payments created server-side, in seconds (120..600).
    "PAYMENT_TIMEOUT": 600,
    # A payment still OPEN/CONFIRM remotely after this long is given up.
    "MAX_AGE": timedelta(hours=48),
    # A payment ATH Móvil does not know is expired this long after its deadline.
    "EXPIRY_GRACE": timedelta(minutes=10),
    # Refunds made elsewhere (the ATH Business app) are found in the transaction report: a run
    # reads the last REFUND_SCAN_WINDOW of it, at most once every REFUND_SCAN_INTERVAL.
    "REFUND_SCAN_WINDOW": timedelta(days=2),
    "REFUND_SCAN_INTERVAL": timedelta(minutes=15),
    # Settled webhook events, sent payment events and sync runs older than this are deleted
    # by the sync itself, a bounded batch per run. Payments and refunds are never deleted.
    "HISTORY_RETENTION": timedelta(days=90),
    # A signal receiver that raised is called again, alone, with backoff, for this long after
    # it first failed; then it is given up (athm_sync.outbox).
    "RECEIVER_GIVE_UP_AFTER": timedelta(days=3),
    "AUTO_CAPTURE": True,
    # Seconds the webhook view may spend verifying an event with ATH Móvil, in total (retries
    # and the whole answer included), before it answers 200 and leaves the event pending.
    "WEBHOOK_VERIFY_TIMEOUT": 4.0,
    # The checkout's status endpoint asks ATH Móvil about a payment at most once per this many
    # seconds, however many tabs poll; and a customer may send the push to another phone at
    # most CHECKOUT_MAX_PHONE_CHANGES times per payment.
    "CHECKOUT_POLL_INTERVAL": 2.0,
    "CHECKOUT_MAX_PHONE_CHANGES": 3,
    # A checkout's pages (the waiting page, its status and actions) answer for this long after
    # the checkout started, then "no longer available": the URL holds the page's token, and
    # URLs end up in browser histories and shared screenshots.
    "CHECKOUT_LINK_LIFETIME": timedelta(days=1),
    # Evertec's JavaScript button library; in development, the sandbox's stand-in for it.
    "CHECKOUT_BUTTON_SCRIPT_URL": "https://payments.athmovil.com/api/modal/js/athmovil_base.js",
}

# (name, smallest allowed value, whole numbers only)
_NUMBERS: tuple[tuple[str, float, bool], ...] = (
    ("CONNECT_TIMEOUT", 0.001, False),
    ("READ_TIMEOUT", 0.001, False),
    ("MAX_ATTEMPTS", 1, True),
    ("RETRY_DEADLINE", 0.001, False),
    ("POOL_SIZE", 1, True),
    ("WORKERS", 1, True),
    ("PAYMENT_TIMEOUT", MIN_PAYMENT_TIMEOUT, True),
    ("WEBHOOK_VERIFY_TIMEOUT", 0.001, False),
    ("CHECKOUT_POLL_INTERVAL", 0.001, False),
    ("CHECKOUT_MAX_PHONE_CHANGES", 0, True),
)
_DURATIONS = (
    "MAX_AGE",
    "EXPIRY_GRACE",
    "REFUND_SCAN_WINDOW",
    "REFUND_SCAN_INTERVAL",
    "HISTORY_RETENTION",
    "RECEIVER_GIVE_UP_AFTER",
    "CHECKOUT_LINK_LIFETIME",
)
_URLS = ("API_BASE_URL", "REPORT_BASE_URL", "CHECKOUT_BUTTON_SCRIPT_URL")
# Where the sandbox serves what a URL setting names, when it is not the sandbox's root.
_SANDBOX_PATHS = {"CHECKOUT_BUTTON_SCRIPT_URL": "/api/modal/js/athmovil_base.js"}
# Hosts that are this machine: plain http to them is the sandbox, never the network.
LOOPBACK_HOSTS = {"localhost", "127.0.0.1", "::1"}
_URL_SAFE = re.compile(r"[A-Za-z0-9._~-]*")
_GENERATE_HINT = "Generate one with: python -c 'import secrets; print(secrets.token_urlsafe(32))'"


@dataclass(frozen=True)
class Problem:
    """One thing wrong with ``ATHM_SYNC``; ``check_id`` is ``athm_sync.E00N`` or ``W00N``."""

    check_id: str
    message: str
    hint: str

    @property
    def is_error(self) -> bool:
        return ".E" in self.check_id


@dataclass(frozen=True)
class AthmSyncSettings:
    """The validated settings, with defaults filled in and URLs without a trailing slash."""

    public_token: str
    private_token: str
    api_base_url: str
    report_base_url: str
    webhook_secret: str
    webhook_previous_secret: str
    connect_timeout: float
    read_timeout: float
    max_attempts: int
    retry_deadline: float
    pool_size: int
    workers: int
    payment_timeout: int
    max_age: timedelta
    expiry_grace: timedelta
    refund_scan_window: timedelta
    refund_scan_interval: timedelta
    history_retention: timedelta
    receiver_give_up_after: timedelta
    auto_capture: bool
    webhook_verify_timeout: float
    checkout_poll_interval: float
    checkout_max_phone_changes: int
    checkout_link_lifetime: timedelta
    checkout_button_script_url: str

    def __repr__(self) -> str:  # never print tokens, even in a debugger or a traceback
        return f"AthmSyncSettings(api_base_url={self.api_base_url!r}, workers={self.workers})"


def raw_settings() -> Any:
    """The ``ATHM_SYNC`` value exactly as the project set it (``{}`` when absent)."""
    return getattr(django_settings, SETTING_NAME, {})


def find_problems(raw: Any) -> list[Problem]:
    """Every problem with a raw ``ATHM_SYNC`` value, errors and warnings, in a stable order."""
    if not isinstance(raw, dict):
        return [
            Problem(
                "athm_sync.E001",
                f"{SETTING_NAME} must be a dict, not {type(raw).__name__}.",
                f'Set {SETTING_NAME} = {{"PUBLIC_TOKEN": "...", "PRIVATE_TOKEN": "..."}}.',
            )
        ]
    values = {**DEFAULTS, **raw}
    problems: list[Problem] = []
    for check_id, name in (("athm_sync.E002", "PUBLIC_TOKEN"), ("athm_sync.E003", "PRIVATE_TOKEN")):
        token = values[name]
        if not isinstance(token, str) or not token.strip():
            problems.append(
                Problem(
                    check_id,
                    f"{SETTING_NAME}['{name}'] is missing or blank.",
                    "Copy it from the ATH Business app: Settings > Development > API Keys.",
                )
            )
    for name in _URLS:
        problems.extend(_url_problems(name, values[name]))
    for name in ("WEBHOOK_SECRET", "WEBHOOK_PREVIOUS_SECRET"):
        problems.extend(_secret_problems(name, values[name]))
    if values["WEBHOOK_PREVIOUS_SECRET"] and not values["WEBHOOK_SECRET"]:
        problems.append(
            Problem(
                "athm_sync.E005",
                f"{SETTING_NAME}['WEBHOOK_PREVIOUS_SECRET'] is set but WEBHOOK_SECRET is not.",
                "While rotating, WEBHOOK_SECRET is the new secret and WEBHOOK_PREVIOUS_SECRET "
                "the old one; to turn webhooks off, leave both empty.",
            )
        )
    for name, smallest, whole in _NUMBERS:
        problems.extend(_number_problems(name, values[name], smallest, whole))
    for name in _DURATIONS:
        if _as_timedelta(values[name]) is None:
            problems.append(
                Problem(
                    "athm_sync.E006",
                    f"{SETTING_NAME}['{name}'] must be a positive timedelta or number of seconds, "
                    f"not {values[name]!r}.",
                    f"For example {SETTING_NAME}['{name}'] = timedelta(hours=48).",
                )
            )
    if not isinstance(values["AUTO_CAPTURE"], bool):
        problems.append(
            Problem(
                "athm_sync.E006",
                f"{SETTING_NAME}['AUTO_CAPTURE'] must be True or False, "
                f"not {values['AUTO_CAPTURE']!r}.",
                "Leave it out to capture confirmed payments automatically (the default).",
            )
        )
    unknown = unknown_keys(raw)
    if unknown:
        problems.append(
            Problem(
                "athm_sync.W001",
                f"{SETTING_NAME} has unknown keys: {', '.join(map(str, unknown))}.",
                f"Check the spelling; known keys are {', '.join(DEFAULTS)}.",
            )
        )
    if (
        isinstance(values["WORKERS"], int)
        and isinstance(values["POOL_SIZE"], int)
        and values["POOL_SIZE"] < values["WORKERS"]
    ):
        problems.append(
            Problem(
                "athm_sync.W003",
                f"{SETTING_NAME}['POOL_SIZE'] ({values['POOL_SIZE']}) is smaller than "
                f"WORKERS ({values['WORKERS']}): workers will open and drop extra connections.",
                "Make POOL_SIZE at least WORKERS.",
            )
        )
    return problems


def unknown_keys(raw: Any = None) -> list[str]:
    """Keys of ``ATHM_SYNC`` (or ``raw``) the app does not know (W001): typos, ignored."""
    raw = raw_settings() if raw is None else raw
    return sorted(map(str, set(raw) - set(DEFAULTS))) if isinstance(raw, dict) else []


def get_settings() -> AthmSyncSettings:
    """The validated settings; raises ``ImproperlyConfigured`` naming the first error."""
    raw = raw_settings()
    errors = [problem for problem in find_problems(raw) if problem.is_error]
    if errors:
        first = errors[0]
        raise ImproperlyConfigured(f"{first.message} {first.hint}")
    values = {**DEFAULTS, **raw}
    return AthmSyncSettings(
        public_token=values["PUBLIC_TOKEN"].strip(),
        private_token=values["PRIVATE_TOKEN"].strip(),
        api_base_url=values["API_BASE_URL"].strip().rstrip("/"),
        report_base_url=values["REPORT_BASE_URL"].strip().rstrip("/"),
        webhook_secret=values["WEBHOOK_SECRET"],
        webhook_previous_secret=values["WEBHOOK_PREVIOUS_SECRET"],
        connect_timeout=float(values["CONNECT_TIMEOUT"]),
        read_timeout=float(values["READ_TIMEOUT"]),
        max_attempts=values["MAX_ATTEMPTS"],
        retry_deadline=float(values["RETRY_DEADLINE"]),
        pool_size=values["POOL_SIZE"],
        workers=values["WORKERS"],
        payment_timeout=values["PAYMENT_TIMEOUT"],
        max_age=_as_timedelta(values["MAX_AGE"]),
        expiry_grace=_as_timedelta(values["EXPIRY_GRACE"]),
        refund_scan_window=_as_timedelta(values["REFUND_SCAN_WINDOW"]),
        refund_scan_interval=_as_timedelta(values["REFUND_SCAN_INTERVAL"]),
        history_retention=_as_timedelta(values["HISTORY_RETENTION"]),
        receiver_give_up_after=_as_timedelta(values["RECEIVER_GIVE_UP_AFTER"]),
        auto_capture=values["AUTO_CAPTURE"],
        webhook_verify_timeout=float(values["WEBHOOK_VERIFY_TIMEOUT"]),
        checkout_poll_interval=float(values["CHECKOUT_POLL_INTERVAL"]),
        checkout_max_phone_changes=values["CHECKOUT_MAX_PHONE_CHANGES"],
        checkout_link_lifetime=_as_timedelta(values["CHECKOUT_LINK_LIFETIME"]),
        checkout_button_script_url=values["CHECKOUT_BUTTON_SCRIPT_URL"].strip(),
    )


def _url_problems(name: str, value: Any) -> list[Problem]:
    parts = urlsplit(value.strip()) if isinstance(value, str) else None
    try:
        port_ok = parts is None or parts.port is None or parts.port > 0
    except ValueError:  # a port that is not a number from 0 to 65535
        port_ok = False
    if parts is None or parts.scheme not in ("http", "https") or not parts.hostname or not port_ok:
        return [
            Problem(
                "athm_sync.E004",
                f"{SETTING_NAME}['{name}'] must be an http(s) URL, not {value!r}.",
                f"Leave it out to use {DEFAULTS[name]}, or point it at the sandbox "
                f"(http://127.0.0.1:8765{_SANDBOX_PATHS.get(name, '')}).",
            )
        ]
    if parts.scheme == "http" and parts.hostname not in LOOPBACK_HOSTS:
        return [
            Problem(
                "athm_sync.W002",
                f"{SETTING_NAME}['{name}'] is plain http on a host that is not loopback: "
                "tokens would cross the network unencrypted.",
                "Use https, or http only for the sandbox on 127.0.0.1.",
            )
        ]
    return []


def _secret_problems(name: str, secret: Any) -> list[Problem]:
    if not isinstance(secret, str) or (secret and len(secret) < MIN_WEBHOOK_SECRET_LENGTH):
        return [
            Problem(
                "athm_sync.E005",
                f"{SETTING_NAME}['{name}'] must be empty (webhooks off) or a string of "
                f"at least {MIN_WEBHOOK_SECRET_LENGTH} characters.",
                _GENERATE_HINT,
            )
        ]
    if not _URL_SAFE.fullmatch(secret):
        return [
            Problem(
                "athm_sync.E005",
                f"{SETTING_NAME}['{name}'] may hold only letters, digits, '-', '_', '.' "
                "and '~': it is part of the webhook's URL.",
                _GENERATE_HINT,
            )
        ]
    return []


def _number_problems(name: str, value: Any, smallest: float, whole: bool) -> list[Problem]:
    kinds = (int,) if whole else (int, float)
    largest = MAX_PAYMENT_TIMEOUT if name == "PAYMENT_TIMEOUT" else float("inf")
    if isinstance(value, kinds) and not isinstance(value, bool) and smallest <= value <= largest:
        return []
    expected = "a whole number" if whole else "a number"
    bounds = (
        f"from {MIN_PAYMENT_TIMEOUT} to {MAX_PAYMENT_TIMEOUT}"
        if name == "PAYMENT_TIMEOUT"
        else f"of at least {smallest:g}"
        if whole
        else "greater than 0"
    )
    return [
        Problem(
            "athm_sync.E006",
            f"{SETTING_NAME}['{name}'] must be {expected} {bounds}, not {value!r}.",
            f"Leave it out to use the default ({DEFAULTS[name]}).",
        )
    ]


def _as_timedelta(value: Any) -> timedelta | None:
    if isinstance(value, timedelta):
        seconds = value.total_seconds()
    elif isinstance(value, int | float) and not isinstance(value, bool):
        seconds = value
    else:
        return None
    try:
        return timedelta(seconds=seconds) if seconds > 0 else None
    except OverflowError:  # infinity, or more days than timedelta can hold
        return None
