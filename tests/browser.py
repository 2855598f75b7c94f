"""A real browser for the checkout's tests: headless Chromium driven by Selenium, and the small
shop (a URLconf) it pays in.

``chromium()`` starts Debian's ``chromium`` through ``/usr/bin/chromedriver``. Without them
the browser tests are skipped, unless ``ATHM_TEST_REQUIRE_BROWSER=1`` (``.ci/run`` sets it),
where a missing browser fails them. ``screenshot()`` saves a PNG into ``docs/images/`` only
when ``ATHM_TEST_SCREENSHOTS=1``, so a test run never rewrites the repository by itself.

This module is also the URLconf the tests serve (``ROOT_URLCONF = "tests.browser"``): a shop's
order page whose form posts the customer's phone to a view calling
:func:`athm_sync.checkout.start` with the server's amount, the shop's paid page, the app's
URLs, and the same order paid with Evertec's button (:func:`button_page`). The live server
serves ``STATIC_ROOT`` under ``STATIC_URL``: point it at
:data:`STATIC` for the waiting page's script.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import pytest
from django.http import HttpRequest, HttpResponse
from django.middleware.csrf import get_token
from django.urls import include, path
from django.utils.html import escape
from django.views.decorators.http import require_POST

ROOT = Path(__file__).resolve().parent.parent
IMAGES = ROOT / "docs" / "images"
STATIC = ROOT / "athm_sync" / "static"
CHROMEDRIVER = "/usr/bin/chromedriver"
WINDOW = (480, 760)  # a phone-sized window: most customers pay on their phone
ORDER = "order-7"
TOTAL = "12.50"  # the server's amount: never read from the browser
PHONE = "787 555 0142"  # the customer's phone, as the shop knows it (the button's page)


def _browser_missing() -> str:
    """Why no browser can be started here ('' when one can)."""
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "needs selenium (pip install -e .[dev])"
    if shutil.which("chromium") is None or not os.path.exists(CHROMEDRIVER):
        return "needs chromium and chromium-driver (apt-get install chromium chromium-driver)"
    return ""


def chromium(*, javascript: bool = True) -> Any:
    """A headless Chromium (a Selenium ``WebDriver``); skips the test when there is none,
    or fails it when ``ATHM_TEST_REQUIRE_BROWSER=1``. The caller quits it."""
    missing = _browser_missing()
    if missing:
        if os.environ.get("ATHM_TEST_REQUIRE_BROWSER") == "1":
            pytest.fail(f"ATHM_TEST_REQUIRE_BROWSER=1 but the browser tests {missing}")
        pytest.skip(missing)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium")
    for argument in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--no-proxy-server",  # loopback only
        f"--window-size={WINDOW[0]},{WINDOW[1]}",
        "--lang=en-US",
    ):
        options.add_argument(argument)
    prefs: dict[str, Any] = {"intl.accept_languages": "en-US,en"}
    if not javascript:
        prefs["profile.managed_default_content_settings.javascript"] = 2
    options.add_experimental_option("prefs", prefs)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(30)
    return driver


def accept_language(driver: Any, languages: str) -> None:
    """Make ``driver`` send ``Accept-Language: languages`` from now on (page and script)."""
    driver.execute_cdp_cmd("Network.enable", {})
    driver.execute_cdp_cmd(
        "Network.setExtraHTTPHeaders", {"headers": {"Accept-Language": languages}}
    )


def screenshot(driver: Any, name: str) -> None:
    """Save what ``driver`` shows as ``docs/images/checkout-<name>.png`` when
    ``ATHM_TEST_SCREENSHOTS=1`` (the pictures in docs/checkout.md)."""
    if os.environ.get("ATHM_TEST_SCREENSHOTS") != "1":
        return
    IMAGES.mkdir(parents=True, exist_ok=True)
    height = driver.execute_script("return document.documentElement.scrollHeight")
    driver.set_window_size(WINDOW[0], max(WINDOW[1] // 2, min(int(height) + 40, WINDOW[1])))
    driver.get_screenshot_as_file(str(IMAGES / f"checkout-{name}.png"))
    driver.set_window_size(*WINDOW)


# -- the shop the browser pays in ----------------------------------------------------------


def order_page(request: HttpRequest) -> HttpResponse:
    """The shop's order page: its total, and the form that starts the checkout."""
    return HttpResponse(
        "<!DOCTYPE html><html><body><h1>Order order-7</h1>"
        f"<p>Total: ${TOTAL}</p>"
        '<form method="post" action="/shop/pay/">'
        f'<input type="hidden" name="csrfmiddlewaretoken" value="{escape(get_token(request))}">'
        '<input type="tel" name="phone_number" id="phone">'
        '<button type="submit" id="pay">Pay with ATH Móvil</button></form></body></html>'
    )


@require_POST
def pay(request: HttpRequest) -> HttpResponse:
    """The shop's view: the amount is the server's; only the phone comes from the form."""
    from athm_sync.checkout import start

    return start(
        request,
        total=TOTAL,
        metadata_1=ORDER,
        phone_number=request.POST.get("phone_number", ""),
        success_url="/shop/paid/",
        cancel_url="",
    )


def button_page(request: HttpRequest) -> HttpResponse:
    """The shop's order page with Evertec's button instead of our form: the amount in the tag
    is the server's, signed; the script the tag loads is the sandbox's stand-in."""
    from django.template import engines

    page = engines["django"].from_string(
        "{% load athm_checkout %}<!DOCTYPE html><html>"
        '<body style="font-family:system-ui,sans-serif;margin:2rem"><h1>Order order-7</h1>'
        "<p>Total: ${{ total }}</p>"
        "{% athm_button total=total metadata_1=order phone_number=phone success_url=paid %}"
        "</body></html>"
    )
    # ?phone=ask: the shop does not know the phone; Evertec's window asks the customer.
    phone = "" if request.GET.get("phone") == "ask" else PHONE
    context = {"total": TOTAL, "order": ORDER, "phone": phone, "paid": "/shop/paid/"}
    return HttpResponse(page.render(context, request))


def paid(request: HttpRequest) -> HttpResponse:
    """The shop's paid page: what the order's payment is, as stored."""
    from athm_sync.models import Payment

    payment = Payment.objects.filter(metadata_1=ORDER).order_by("-created_at").first()
    paid = payment is not None and payment.status == Payment.Status.COMPLETED
    status = "paid" if paid else "not paid"
    return HttpResponse(
        '<!DOCTYPE html><html><body style="font-family:system-ui,sans-serif;margin:2rem">'
        f'<h1>Thank you!</h1><p id="order">Order {ORDER}: {escape(status)}</p></body></html>'
    )


urlpatterns = [
    path("shop/", order_page),
    path("shop/pay/", pay),
    path("shop/button/", button_page),
    path("shop/paid/", paid),
    path("athm/", include("athm_sync.urls")),
]
