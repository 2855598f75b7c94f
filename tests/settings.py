"""Settings for the test suite: SQLite by default, PostgreSQL when DATABASE_URL is set."""

import os
import tempfile
from urllib.parse import unquote, urlsplit

SECRET_KEY = "tests-only-not-secret"
DEBUG = False
# ATHM_TEST_USE_TZ=0 runs the suite (and every child process it starts, which inherits the
# environment) with USE_TZ = False, as older shops still do: Django then stores naive local times
# in TIME_ZONE. .ci/run runs the end-to-end tests that way on SQLite and PostgreSQL.
USE_TZ = os.environ.get("ATHM_TEST_USE_TZ", "1") != "0"
TIME_ZONE = "America/New_York"  # deliberately neither UTC nor Puerto Rico
ALLOWED_HOSTS = ["*"]
INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "athm_sync",
    "tests.shop",  # a shop's own model, which the crash tests' receivers write
]
# Child processes started by tests/test_overlap.py log every signal they send to this file.
if os.environ.get("ATHM_TEST_SIGNAL_LOG"):
    INSTALLED_APPS.append("tests.signal_log")
MIDDLEWARE = [
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
]
ROOT_URLCONF = "tests.urls"
# pytest-django's live_server serves static files under this prefix; it must be set.
STATIC_URL = "static/"
TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ]
        },
    }
]
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"


def _database_from_url(url: str) -> dict:
    parts = urlsplit(url)
    if parts.scheme not in ("postgres", "postgresql"):
        raise ValueError(f"DATABASE_URL must be a postgresql:// URL, not {parts.scheme}://")
    return {
        "ENGINE": "django.db.backends.postgresql",
        "NAME": unquote(parts.path.lstrip("/")) or "athm_sync",
        "USER": unquote(parts.username or "postgres"),
        "PASSWORD": unquote(parts.password or ""),
        "HOST": parts.hostname or "127.0.0.1",
        "PORT": str(parts.port or 5432),
    }


if os.environ.get("DATABASE_URL"):
    DATABASES = {"default": _database_from_url(os.environ["DATABASE_URL"])}
else:
    DATABASES = {
        "default": {
            "ENGINE": "django.db.backends.sqlite3",
            # A child process (ATHM_TEST_SQLITE set) runs commands against the parent's test file.
            "NAME": os.environ.get("ATHM_TEST_SQLITE")
            or os.path.join(os.path.dirname(__file__), "test.sqlite3"),
            # ATHM_TEST_SQLITE_DEFERRED: Django's default deferred transactions, for children
            # that check the "database is locked" retries.
            "OPTIONS": {}
            if os.environ.get("ATHM_TEST_SQLITE_DEFERRED")
            else {"transaction_mode": "IMMEDIATE"},
            # A file, so threads and processes share it, named per run, so that two runs
            # never share one (ATHM_TEST_SQLITE lets a child process join its parent's).
            "TEST": {
                "NAME": os.environ.get("ATHM_TEST_SQLITE")
                or os.path.join(tempfile.gettempdir(), f"athm-sync-test-{os.getpid()}.sqlite3")
            },
        }
    }

# Tests that talk to the sandbox point these at it; a child process is told by the env var.
_SANDBOX_URL = os.environ.get("ATHM_TEST_API_BASE_URL") or "http://127.0.0.1:9"
ATHM_SYNC = {
    "PUBLIC_TOKEN": "sandbox-public-token",
    "PRIVATE_TOKEN": "sandbox-private-token",
    "API_BASE_URL": _SANDBOX_URL,
    "REPORT_BASE_URL": _SANDBOX_URL,
    "WEBHOOK_SECRET": "w" * 40,
    "CONNECT_TIMEOUT": 1.0,
    "READ_TIMEOUT": 2.0,
    "MAX_ATTEMPTS": 3,
    "RETRY_DEADLINE": 5.0,
}

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "loggers": {"athm_sync": {"handlers": ["console"], "level": "WARNING"}},
}
