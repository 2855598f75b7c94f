"""A tiny shop's settings: one ``orders`` app that sells with ATH Móvil through athm_sync."""

import os
import tempfile

SECRET_KEY = "example-shop-not-secret"  # noqa: S105 - an example
USE_TZ = True
ALLOWED_HOSTS = ["*"]
INSTALLED_APPS = [
    "django.contrib.contenttypes",
    "django.contrib.auth",
    "athm_sync",
    "orders",
]
# The checkout's pages: templates, the CSRF cookie their forms need, the language the
# customer asks for, and the URL their scripts are served under. {% athm_button %} needs the
# request (the CSRF token its callback is posted with).
MIDDLEWARE = [
    "django.middleware.locale.LocaleMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
]
TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "APP_DIRS": True,
        "OPTIONS": {"context_processors": ["django.template.context_processors.request"]},
    }
]
STATIC_URL = "static/"
LANGUAGES = [("en", "English"), ("es", "Español")]
ROOT_URLCONF = "shop_site.urls"
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": os.path.join(os.path.dirname(__file__), "shop.sqlite3"),
        # Let a sync run's writers queue instead of failing with "database is locked".
        "OPTIONS": {"transaction_mode": "IMMEDIATE"},
        # A file the sync's worker threads share, one per test process.
        "TEST": {
            "NAME": os.path.join(tempfile.gettempdir(), f"example-shop-{os.getpid()}.sqlite3")
        },
    }
}
ATHM_SYNC = {
    # In production these come from the environment; the tests point them at the sandbox.
    "PUBLIC_TOKEN": os.environ.get("ATHM_PUBLIC_TOKEN", ""),
    "PRIVATE_TOKEN": os.environ.get("ATHM_PRIVATE_TOKEN", ""),
    "WEBHOOK_SECRET": os.environ.get(
        "ATHM_WEBHOOK_SECRET", "example-shop-webhook-secret-0123456789"
    ),
    # Evertec's button script is loaded from ATH Móvil by default; the tests (and development
    # against the sandbox) set CHECKOUT_BUTTON_SCRIPT_URL to the sandbox's stand-in.
}
