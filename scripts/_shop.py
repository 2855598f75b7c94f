"""The throwaway shop behind scripts/demo and scripts/bench: a Django project on SQLite that
uses athm_sync against the sandbox ATH Móvil server, and Django served over real HTTP.

The scripts import it as ``import _shop`` (Python puts a script's own folder first on
``sys.path``, whatever the working directory). :func:`throwaway_shop` starts the sandbox,
writes the project into a temporary folder (:func:`write_project`), configures Django with it
and migrates, and removes it all afterwards; :class:`DjangoServer` serves it on loopback.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from athm_sync.sandbox import SandboxServer

HOST = "127.0.0.1"
# The sandbox's tokens and a webhook secret for a throwaway project: not secrets.
PUBLIC_TOKEN = "sandbox-public-token"  # noqa: S105
PRIVATE_TOKEN = "sandbox-private-token"  # noqa: S105
WEBHOOK_SECRET = "throwaway-shop-webhook-secret-0123456789abcdef"  # noqa: S105
PACKAGE = "throwaway_shop"

SETTINGS = """\
SECRET_KEY = "throwaway-only"
DEBUG = False
ALLOWED_HOSTS = [{host!r}]
USE_TZ = True
INSTALLED_APPS = ["django.contrib.contenttypes", "athm_sync"]
MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    # Sets Content-Length, which lets the server keep a connection alive.
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
]
ROOT_URLCONF = "{package}.urls"
# The checkout's pages (scripts/demo --serve, scripts/bench checkout): templates and their script;
# {{% athm_button %}} needs the request (the CSRF token its callback is posted with).
TEMPLATES = [
    {{
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "APP_DIRS": True,
        "OPTIONS": {{"context_processors": ["django.template.context_processors.request"]}},
    }}
]
STATIC_URL = "static/"
DATABASES = {{
    "default": {{
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": {database!r},
        "OPTIONS": {{"transaction_mode": "IMMEDIATE"}},
    }}
}}
ATHM_SYNC = {{
    "PUBLIC_TOKEN": {public!r},
    "PRIVATE_TOKEN": {private!r},
    "API_BASE_URL": {url!r},
    "REPORT_BASE_URL": {url!r},
    "WEBHOOK_SECRET": {secret!r},
    # Evertec's button script: the sandbox's stand-in, which talks only to the sandbox.
    "CHECKOUT_BUTTON_SCRIPT_URL": {button_script!r},
}}
LOGGING = {{
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {{"stderr": {{"class": "logging.StreamHandler"}}}},
    "loggers": {{
        "athm_sync": {{"handlers": ["stderr"], "level": "WARNING", "propagate": False}},
        # Every forged webhook is logged as a warning when rejected: expected here.
        "athm_sync.inbox": {{"level": "ERROR"}},
    }},
}}
"""

URLS = """\
from django.urls import include, path

urlpatterns = [path("athm/", include("athm_sync.urls"))]
"""

# scripts/demo --serve and scripts/bench checkout: the shop's checkout (_checkout_shop.py),
# importable in the script's own process only (its folder is first on sys.path).
CHECKOUT_URLS = "from _checkout_shop import urlpatterns  # noqa: F401\n"

MANAGE = """\
import os, sys
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "{package}.settings")
from django.core.management import execute_from_command_line
execute_from_command_line(sys.argv)
"""


def write_project(folder: Path, sandbox: SandboxServer, urls: str = URLS) -> None:
    """A Django project (settings, URLconf, manage.py) using athm_sync on SQLite and the
    ``sandbox`` (its API, its report and its stand-in for Evertec's button script).

    The app's URLs are under ``athm/`` (``urls``: another URLconf's source); the database is
    ``folder/db.sqlite3``.
    """
    package = folder / PACKAGE
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "urls.py").write_text(urls)
    (package / "settings.py").write_text(
        SETTINGS.format(
            host=HOST,
            package=PACKAGE,
            database=str(folder / "db.sqlite3"),
            public=PUBLIC_TOKEN,
            private=PRIVATE_TOKEN,
            url=sandbox.url,
            secret=WEBHOOK_SECRET,
            button_script=sandbox.button_script_url,
        )
    )
    (folder / "manage.py").write_text(MANAGE.format(package=PACKAGE))


def setup_django(folder: Path, sandbox: SandboxServer, urls: str = URLS) -> None:
    """Write the project, configure Django with it and migrate its database."""
    write_project(folder, sandbox, urls)
    sys.path.insert(0, str(folder))
    os.environ["DJANGO_SETTINGS_MODULE"] = f"{PACKAGE}.settings"
    import django
    from django.core.management import call_command

    django.setup()
    call_command("migrate", verbosity=0)


@contextmanager
def throwaway_shop(
    prefix: str, parent: Path | None = None, urls: str = URLS
) -> Iterator[tuple[SandboxServer, Path]]:
    """Start the sandbox and set the project up in a new temporary folder (in ``parent``, by
    default the system's temp folder), its URLconf's source ``urls``; yields
    ``(sandbox, folder)``. Afterwards it stops the sandbox, closes the database connections and
    deletes the folder."""
    from athm_sync.sandbox import SandboxServer

    folder = Path(tempfile.mkdtemp(prefix=prefix, dir=parent))
    configured = False
    try:
        sandbox = SandboxServer(
            host=HOST, port=0, public_token=PUBLIC_TOKEN, private_token=PRIVATE_TOKEN
        ).start()
        try:
            setup_django(folder, sandbox, urls)
            configured = True
            yield sandbox, folder
        finally:
            sandbox.stop()
    finally:
        if configured:
            from django.db import connections

            connections.close_all()
        shutil.rmtree(folder, ignore_errors=True)


def webhook_path() -> str:
    """The path of the project's ``athm_sync:webhook`` view: ``/athm/webhook/<secret>/``."""
    from django.urls import reverse

    return reverse("athm_sync:webhook", kwargs={"token": WEBHOOK_SECRET})


# -- Django over HTTP ------------------------------------------------------------------------

SERVER_DESCRIPTION = (
    "django.core.servers.basehttp.ThreadedWSGIServer + WSGIRequestHandler (HTTP/1.1, "
    "a thread per connection, TCP_NODELAY), get_wsgi_application()"
)


class DjangoServer:
    """Django's own threaded WSGI server (the one behind runserver) on a free loopback port.

    Its handler speaks HTTP/1.1 and keeps connections alive when the answer has a
    Content-Length (CommonMiddleware sets it). Two changes from runserver: no access log, and
    TCP_NODELAY, since wsgiref writes the status line, the headers and the body in separate
    sends and Nagle's algorithm would hold the later ones for the client's delayed ACK.
    """

    def __init__(self, port: int = 0) -> None:
        """Bind ``port`` (0: a free one) now; nothing is served until :meth:`start`."""
        from django.core.servers.basehttp import ThreadedWSGIServer, WSGIRequestHandler
        from django.core.wsgi import get_wsgi_application

        class Handler(WSGIRequestHandler):
            disable_nagle_algorithm = True

            def log_message(self, format: str, *args: Any) -> None:
                """No access log: one line per request would be all the output."""

        counter = self

        class Server(ThreadedWSGIServer):
            def process_request(self, request: Any, client_address: Any) -> None:
                with counter._lock:
                    counter.connections += 1
                super().process_request(request, client_address)

        self.connections = 0
        self._lock = threading.Lock()
        self._httpd = Server((HOST, port), Handler)
        self._httpd.set_app(get_wsgi_application())
        self._thread = threading.Thread(
            target=self._httpd.serve_forever,
            kwargs={"poll_interval": 0.05},
            name="shop-django",
            daemon=True,
        )

    @property
    def url(self) -> str:
        """``http://127.0.0.1:port``."""
        return f"http://{HOST}:{self._httpd.server_address[1]}"

    def start(self) -> DjangoServer:
        """Serve in a daemon thread; returns self."""
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop accepting and close the listening socket (open connections die with us)."""
        if self._thread.is_alive():
            self._httpd.shutdown()
            self._thread.join(timeout=5)
        self._httpd.server_close()

    def __enter__(self) -> DjangoServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
