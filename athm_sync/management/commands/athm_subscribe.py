"""``manage.py athm_subscribe SITE_URL``: register the shop's webhook listener with ATH Móvil.

The listener URL is ``SITE_URL`` followed by the path of the ``athm_sync:webhook`` view,
reversed from the project's URLconf with ``ATHM_SYNC['WEBHOOK_SECRET']`` as its token. The
command sends it, with the chosen events, to ATH Móvil's subscribe call and prints what was
registered, the secret masked.

Exit status: 0 when registered (or, with ``--dry-run``, when it would be sent); 2 when it was
not (bad URL, options or settings, ATH Móvil refused or could not be reached). Expected
failures print one line on stderr, never a traceback, and never the whole webhook secret.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any
from urllib.parse import SplitResult, urlsplit

from django.core.exceptions import ImproperlyConfigured
from django.core.management.base import CommandParser
from django.urls import NoReverseMatch, reverse

from athm_sync.client import RETRY_LOG_MARK, ATHMovilClient
from athm_sync.conf import AthmSyncSettings, get_settings
from athm_sync.errors import ATHMovilError, AuthenticationError, TransientError
from athm_sync.management.base import OneLineErrorCommand

PROGRAM = "athm_subscribe"
WEBHOOK_URL_NAME = "athm_sync:webhook"
MASK_KEEP = 4  # characters of the secret token shown before the ellipsis
MASK = "…"
_PLACEHOLDER = "athm-token-placeholder"

# Event name on the command line -> keyword of ATHMovilClient.subscribe_webhooks.
EVENTS: dict[str, str] = {
    "completed": "ecommerce_payment_received",
    "cancelled": "ecommerce_payment_cancelled",
    "expired": "ecommerce_payment_expired",
    "refund": "refund_sent",
    "payment": "payment_received",
    "donation": "donation_received",
}
DEFAULT_EVENTS: tuple[str, ...] = ("completed", "cancelled", "expired", "refund")
# Events athm_sync stores but does not act on: turned on only when asked for.
IGNORED_EVENTS: tuple[str, ...] = ("payment", "donation")
# The real ATH Móvil: a plain-http listener is never registered there, even with --sandbox.
_ATH_MOVIL_DOMAIN = "athmovil.com"


class Refused(Exception):
    """The subscription cannot be sent; the message is the one line shown to the user."""


@dataclass(frozen=True)
class Listener:
    """The listener URL to register, and the same URL with the secret token masked."""

    url: str
    masked: str
    token: str  # the secret as it appears in the URL path


def parse_events(values: Iterable[str] | None) -> tuple[str, ...]:
    """The event names from ``--events`` values (each comma-separated), in the known order.

    ``None`` (the option not given) means :data:`DEFAULT_EVENTS`. Names are case-insensitive;
    repeats are harmless. Raises :class:`Refused` for an unknown name or an empty list.
    """
    if values is None:
        return DEFAULT_EVENTS
    names = {piece.strip().lower() for value in values for piece in value.split(",")}
    names.discard("")
    unknown = sorted(names - set(EVENTS))
    if unknown:
        raise Refused(
            f"unknown event(s) {', '.join(map(repr, unknown))} in --events; "
            f"known events: {', '.join(EVENTS)}"
        )
    if not names:
        raise Refused(
            f"--events is empty: name at least one of {', '.join(EVENTS)} "
            f"(default: {','.join(DEFAULT_EVENTS)})"
        )
    return tuple(name for name in EVENTS if name in names)


def parse_site_url(site_url: str, *, allow_http: bool) -> SplitResult:
    """``SITE_URL`` split into parts, or :class:`Refused` saying what is wrong with it.

    It must be an absolute https URL (http too when ``allow_http``) with a host, no query, no
    fragment, no user or password, and no spaces. A path (a prefix the site is served under)
    is allowed. The URL itself is never echoed: it may already carry the webhook secret.
    """
    text = site_url.strip()
    if not text:
        raise Refused(
            "SITE_URL is empty: give the site's public address, e.g. https://shop.example.com"
        )
    if any(char.isspace() or ord(char) < 32 for char in text):
        raise Refused("SITE_URL contains spaces or control characters")
    parts = urlsplit(text)
    schemes = ("https", "http") if allow_http else ("https",)
    if parts.scheme not in schemes:
        if parts.scheme == "http":
            raise Refused(
                "SITE_URL must be https: ATH Móvil posts payment details to it "
                "(pass --sandbox to allow http when registering with the sandbox)"
            )
        shown = f"{parts.scheme}://" if parts.scheme else "no scheme"
        raise Refused(
            f"SITE_URL must be an absolute {' or '.join(schemes)} URL such as "
            f"https://shop.example.com, not {shown}"
        )
    if not parts.hostname:
        raise Refused(
            "SITE_URL has no host: give the site's public address, e.g. https://shop.example.com"
        )
    try:
        parts.port  # noqa: B018 - raises ValueError for a port that is not 0..65535
    except ValueError:
        raise Refused("SITE_URL has an invalid port") from None
    if parts.username is not None or parts.password is not None:
        raise Refused("SITE_URL must not carry a user or password (user:password@host)")
    if parts.query or parts.fragment or "?" in text or "#" in text:
        raise Refused(
            "SITE_URL must not have a query (?...) or fragment (#...): "
            "give the site's address, optionally with the path prefix it is served under"
        )
    return parts


def webhook_path(token: str) -> str:
    """The webhook view's path for ``token`` (it starts with "/"), or :class:`Refused`."""
    try:
        return reverse(WEBHOOK_URL_NAME, kwargs={"token": token})
    except NoReverseMatch:
        pass
    try:
        reverse(WEBHOOK_URL_NAME, kwargs={"token": _PLACEHOLDER})
    except NoReverseMatch:
        raise Refused(
            "the URLconf does not include athm_sync.urls, so there is no webhook view to "
            'register: add path("athm/", include("athm_sync.urls")) to your urlpatterns'
        ) from None
    raise Refused(
        "ATHM_SYNC['WEBHOOK_SECRET'] cannot be carried in a URL path (it contains '/'?): "
        "generate one with python -c 'import secrets; print(secrets.token_urlsafe(32))'"
    )


def build_listener(parts: SplitResult, secret: str) -> Listener:
    """The listener URL: the site's address, its path prefix, then the webhook path.

    When the address already ends with the webhook path for ``secret`` it is not appended
    again; when it ends with the webhook path for another token, :class:`Refused`.
    """
    path = webhook_path(secret)
    placeholder_path = webhook_path(_PLACEHOLDER)
    start = placeholder_path.index(_PLACEHOLDER)
    before, after = placeholder_path[:start], placeholder_path[start + len(_PLACEHOLDER) :]
    token_in_path = path[len(before) : len(path) - len(after)]
    masked_path = f"{before}{token_in_path[:MASK_KEEP]}{MASK}{after}"

    prefix = parts.path.rstrip("/")
    if prefix.endswith(path.rstrip("/")):
        prefix = prefix[: len(prefix) - len(path.rstrip("/"))]
    elif before.strip("/") and after.strip("/") == "":
        _, found, tail = (prefix + "/").rpartition(before)
        if found and "/" not in tail.rstrip("/"):
            raise Refused(
                "SITE_URL already ends with a webhook path, but not the one for "
                "ATHM_SYNC['WEBHOOK_SECRET']: give only the site's address "
                "(e.g. https://shop.example.com) and the command adds the webhook path"
            )
    origin = f"{parts.scheme}://{parts.netloc}{prefix}"
    return Listener(url=origin + path, masked=origin + masked_path, token=token_in_path)


class Command(OneLineErrorCommand):
    help = (
        "Register this site's webhook listener (SITE_URL + the athm_sync webhook path with "
        "ATHM_SYNC['WEBHOOK_SECRET']) with ATH Móvil's subscribe call. Exit 0: registered; "
        "2: not registered."
    )
    program = PROGRAM

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "site_url",
            metavar="SITE_URL",
            help="The site's public address, e.g. https://shop.example.com or "
            "https://example.com/shop; the webhook path is appended.",
        )
        parser.add_argument(
            "--events",
            action="append",
            metavar="LIST",
            help=f"Comma-separated events to turn on (repeatable), from {', '.join(EVENTS)}; "
            f"the others are turned off. Default: {','.join(DEFAULT_EVENTS)}.",
        )
        parser.add_argument(
            "--sandbox",
            action="store_true",
            help="Allow an http:// SITE_URL, for a site registered with the sandbox server.",
        )
        parser.add_argument(
            "--dry-run",
            action="store_true",
            help="Print what would be registered; send nothing to ATH Móvil.",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        self._secrets: set[str] = set()
        dry_run = bool(options["dry_run"])
        try:
            events = parse_events(options["events"])
            parts = parse_site_url(options["site_url"], allow_http=bool(options["sandbox"]))
            conf = self._settings()
            listener = build_listener(parts, conf.webhook_secret)
            self._secrets.add(listener.token)
            if parts.scheme == "http" and _is_ath_movil(conf.report_base_url):
                raise Refused(
                    "--sandbox allows http only with the sandbox server, but "
                    f"ATHM_SYNC['REPORT_BASE_URL'] is ATH Móvil itself ({conf.report_base_url}): "
                    "register an https SITE_URL"
                )
            if dry_run:
                answer = None
            else:
                with _quiet_retries(int(options["verbosity"]) < 2):
                    answer = self._subscribe(listener, events, conf)
        except Refused as error:
            self.fail(str(error))
        if int(options["verbosity"]) >= 1:
            self._print(listener, events, conf, answer, dry_run=dry_run)

    # -- steps ---------------------------------------------------------------------------

    def _settings(self) -> AthmSyncSettings:
        try:
            conf = get_settings()
        except ImproperlyConfigured as error:
            raise Refused(f"bad ATHM_SYNC setting: {error}") from None
        if not conf.webhook_secret:
            raise Refused(
                "set ATHM_SYNC['WEBHOOK_SECRET'] first (at least 32 characters, e.g. from "
                "python -c 'import secrets; print(secrets.token_urlsafe(32))'): the webhook "
                "view is off without it, so there is nothing to register"
            )
        self._secrets.update(filter(None, (conf.webhook_secret, conf.webhook_previous_secret)))
        return conf

    def _subscribe(
        self, listener: Listener, events: tuple[str, ...], conf: AthmSyncSettings
    ) -> dict[str, Any]:
        flags = {keyword: name in events for name, keyword in EVENTS.items()}
        try:
            with ATHMovilClient.from_settings() as client:
                return client.subscribe_webhooks(listener.url, **flags)
        except ValueError as error:  # the private token is missing
            raise Refused(
                f"set ATHM_SYNC['PRIVATE_TOKEN'] first: the subscribe call needs it ({error})"
            ) from None
        except AuthenticationError as error:
            raise Refused(
                f"ATH Móvil rejected the credentials: {error}; check ATHM_SYNC['PUBLIC_TOKEN'] "
                "and ATHM_SYNC['PRIVATE_TOKEN']"
            ) from None
        except TransientError as error:
            if "could not connect" in error.message:
                raise Refused(
                    f"ATH Móvil is unreachable at {conf.report_base_url}: {error.message}"
                ) from None
            raise Refused(
                f"ATH Móvil did not register the listener: {error}; try again later"
            ) from None
        except ATHMovilError as error:
            raise Refused(f"ATH Móvil refused the subscription: {error}") from None

    # -- output ------------------------------------------------------------------------------

    def _print(
        self,
        listener: Listener,
        events: tuple[str, ...],
        conf: AthmSyncSettings,
        answer: dict[str, Any] | None,
        *,
        dry_run: bool,
    ) -> None:
        off = [name for name in EVENTS if name not in events]
        verb = "dry run, nothing sent: would register" if dry_run else "registered"
        lines = [
            f"{PROGRAM}: {verb} {listener.masked}",
            f"  with ATH Móvil at {conf.report_base_url}",
            f"  events on:  {', '.join(events)}",
            f"  events off: {', '.join(off) or '(none)'}",
        ]
        ignored = [name for name in events if name in IGNORED_EVENTS]
        if ignored:
            lines.append(
                f"  note: athm_sync stores {' and '.join(ignored)} events but does not act on them"
            )
        message = answer.get("message") if isinstance(answer, dict) else None
        if isinstance(message, str) and message.strip():
            lines.append(f"  ATH Móvil says: {' '.join(message.split())}")
        self.stdout.write(self.scrub("\n".join(lines)))

    def scrub(self, text: str) -> str:
        """``text`` with the webhook secret masked wherever it appears."""
        for secret in sorted(self._secrets, key=len, reverse=True):
            text = text.replace(secret, secret[:MASK_KEEP] + MASK)
        return text


def _is_ath_movil(url: str) -> bool:
    host = (urlsplit(url).hostname or "").lower()
    return host == _ATH_MOVIL_DOMAIN or host.endswith("." + _ATH_MOVIL_DOMAIN)


@contextmanager
def _quiet_retries(quiet: bool) -> Iterator[None]:
    """While the call runs, drop the client's "retrying" warnings when ``quiet``.

    The command reports the outcome itself in one line; the warnings (shown with ``-v 2``)
    would add a line per retry on stderr.
    """
    client_logger = logging.getLogger("athm_sync.client")

    def drop_retries(record: logging.LogRecord) -> bool:
        return not getattr(record, RETRY_LOG_MARK, False)

    if quiet:
        client_logger.addFilter(drop_retries)
    try:
        yield
    finally:
        if quiet:
            client_logger.removeFilter(drop_retries)
