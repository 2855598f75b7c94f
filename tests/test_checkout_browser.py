"""The checkout tried in a real browser: headless Chromium (``tests/browser.py``) pays in a
small shop served by pytest-django's ``live_server``, against the real sandbox ATH Móvil.

The customer's phone is the sandbox's phone page, opened in a second tab of the same browser:
the customer taps Approve or Decline there, as in the ATH Móvil app. Time moves with
time-machine (the live server and the sandbox run in threads of this process, so their clocks
move too), and the tests wait for the page with ``WebDriverWait`` on what the page shows,
never by sleeping. One browser serves the whole module; JavaScript off needs a browser of its
own. The JavaScript button runs the sandbox's stand-in for Evertec's ``athmovil_base.js``.

``ATHM_TEST_SCREENSHOTS=1`` saves the pages shown in docs/checkout.md into docs/images/.
"""

from __future__ import annotations

from decimal import Decimal

import pytest

from athm_sync.checkout.models import Checkout
from athm_sync.models import Payment
from tests import browser

pytestmark = pytest.mark.django_db(transaction=True)  # the live server's thread sees the rows

S = Payment.Status
PHONE = browser.PHONE
WAIT = 15  # seconds WebDriverWait gives the page to change: an upper bound, not a pause


@pytest.fixture(scope="module")
def chrome():
    """One headless Chromium for the module."""
    driver = browser.chromium()
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture
def shop(chrome, live_server, athm_settings, settings):
    """The browser, fresh, at the shop served by the live server; the script polls fast."""
    settings.ROOT_URLCONF = "tests.browser"
    settings.STATIC_ROOT = str(browser.STATIC)
    settings.ATHM_SYNC = {**settings.ATHM_SYNC, "CHECKOUT_POLL_INTERVAL": 0.5}
    browser.accept_language(chrome, "en-US,en;q=0.9")
    chrome.delete_all_cookies()
    chrome.url = live_server.url  # where the shop is, for the tests' own URLs
    yield chrome
    # Back to one tab for the next test.
    for handle in chrome.window_handles[1:]:
        chrome.switch_to.window(handle)
        chrome.close()
    chrome.switch_to.window(chrome.window_handles[0])


def until(driver, condition, message: str = ""):
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, WAIT, poll_frequency=0.1).until(condition, message)


def text_of(driver, selector: str) -> str:
    from selenium.webdriver.common.by import By

    return driver.find_element(By.CSS_SELECTOR, selector).text


def shows(selector: str, words: str):
    """A condition: the element ``selector`` holds ``words``."""
    from selenium.common.exceptions import WebDriverException
    from selenium.webdriver.common.by import By

    def holds(driver) -> bool:
        try:
            return words in driver.find_element(By.CSS_SELECTOR, selector).text
        except WebDriverException:  # not there yet, or the page changed under the lookup
            return False

    return holds


def at(path: str):
    """A condition: the browser is at ``path`` (of the live server)."""
    return lambda driver: driver.current_url.split("?")[0].endswith(path)


def pay(driver, base_url: str) -> Checkout:
    """The customer opens the order, types the phone and presses Pay; returns the checkout
    once its waiting page shows."""
    from selenium.webdriver.common.by import By

    driver.get(base_url + "/shop/")
    driver.find_element(By.ID, "phone").send_keys(PHONE)
    driver.find_element(By.ID, "pay").click()
    until(driver, shows(".athm-total", "$12.50"), "the waiting page never showed")
    return Checkout.objects.select_related("payment").get()


def on_the_phone(
    driver, sandbox, action: str, *, total: str = browser.TOTAL, picture: str = ""
) -> None:
    """The customer taps ``action`` (``approve`` or ``decline``) on the payment request for
    ``total`` on the sandbox's phone page, in a tab of its own, then comes back to the shop's
    tab."""
    from selenium.webdriver.common.by import By

    shop_tab = driver.current_window_handle
    driver.switch_to.new_window("tab")
    try:
        driver.get(f"{sandbox.url}/phone/{PHONE.replace(' ', '')}/")
        until(driver, shows(".push", f"${total}"), "the phone never showed the payment request")
        if picture:
            browser.screenshot(driver, picture)
        driver.find_element(By.CSS_SELECTOR, f".push button.{action}").click()
        done = "Approved" if action == "approve" else "Cancelled"
        until(driver, shows(".push", done), f"the phone page never showed {done}")
    finally:
        driver.close()
        driver.switch_to.window(shop_tab)


def checkout_path(checkout: Checkout) -> str:
    """The checkout's waiting page (the URL with its token)."""
    from athm_sync.checkout import flow

    return flow.wait_url(checkout)


def test_approving_on_the_phone_takes_the_waiting_page_to_the_shops_paid_page(
    shop, athm_customer, athm_signals
):
    checkout = pay(shop, shop.url)
    assert checkout.token in shop.current_url
    assert "(•••) •••-0142" in text_of(shop, "main")
    assert "Open ATH Móvil on your phone" in text_of(shop, "[data-message]")
    browser.screenshot(shop, "wait-en")

    on_the_phone(shop, athm_customer.sandbox, "approve", picture="phone")

    until(shop, at("/shop/paid/"), "the script never took the customer to the paid page")
    assert text_of(shop, "#order") == "Order order-7: paid"
    assert Payment.objects.get().status == S.COMPLETED
    assert athm_signals.names == ["payment_completed"]
    assert athm_customer.sandbox.counts()["authorization"] == 1
    browser.screenshot(shop, "success")


def test_declining_on_the_phone_shows_the_cancelled_page(shop, athm_customer, athm_signals):
    pay(shop, shop.url)

    on_the_phone(shop, athm_customer.sandbox, "decline")

    until(shop, shows("h1", "Payment cancelled"), "the cancelled page never showed")
    assert Payment.objects.get().status == S.CANCEL
    assert athm_signals.names == ["payment_cancelled"]
    browser.screenshot(shop, "cancelled")


def test_the_deadline_passing_shows_the_expired_page(shop, athm_customer, athm_signals):
    checkout = pay(shop, shop.url)

    athm_customer.let_expire(str(checkout.payment.pk))  # moves both clocks past the deadline

    until(shop, shows("main", "Time ran out"), "the expired page never showed")
    assert Payment.objects.get().status == S.EXPIRED
    assert athm_signals.names == ["payment_expired"]
    browser.screenshot(shop, "expired")


def test_a_reload_and_a_second_tab_show_the_same_payment_and_both_reach_the_outcome(
    shop, athm_customer, athm_signals
):
    checkout = pay(shop, shop.url)
    first = shop.current_window_handle
    shop.refresh()
    until(shop, shows(".athm-total", "$12.50"))
    shop.switch_to.new_window("tab")
    shop.get(checkout_url := shop.url + checkout_path(checkout))
    until(shop, shows(".athm-total", "$12.50"))
    assert "(•••) •••-0142" in text_of(shop, "main")

    on_the_phone(shop, athm_customer.sandbox, "approve")

    for tab in (shop.current_window_handle, first):
        shop.switch_to.window(tab)
        until(shop, at("/shop/paid/"), "a tab never reached the paid page")
    assert shop.current_url != checkout_url
    assert Payment.objects.count() == 1 and Checkout.objects.count() == 1
    assert athm_signals.names == ["payment_completed"]
    counts = athm_customer.sandbox.counts()
    assert (counts["payment"], counts["authorization"]) == (1, 1)


def test_the_back_button_and_paying_again_lead_to_the_same_payment(
    shop, athm_customer, athm_signals
):
    from selenium.webdriver.common.by import By

    def back_and_pay_again() -> None:
        shop.back()
        until(shop, at("/shop/"), "the back button never reached the order page")
        field = shop.find_element(By.ID, "phone")
        field.clear()  # the browser may have kept what was typed
        field.send_keys(PHONE)
        shop.find_element(By.ID, "pay").click()

    checkout = pay(shop, shop.url)
    waiting = shop.current_url
    back_and_pay_again()  # mid-wait: the customer thinks nothing happened
    until(shop, shows(".athm-total", "$12.50"))
    assert shop.current_url == waiting

    on_the_phone(shop, athm_customer.sandbox, "approve")
    until(shop, at("/shop/paid/"))
    back_and_pay_again()  # paid: pressing Pay again charges nothing
    until(shop, at("/shop/paid/"), "paying a paid order again never led to the paid page")

    assert Checkout.objects.get().pk == checkout.pk
    assert Payment.objects.get().status == S.COMPLETED
    assert athm_signals.names == ["payment_completed"]
    counts = athm_customer.sandbox.counts()
    assert (counts["payment"], counts["authorization"]) == (1, 1)


def test_the_spanish_waiting_page_and_its_script_speak_spanish(shop, athm_customer):
    browser.accept_language(shop, "es-PR,es;q=0.9,en;q=0.5")
    checkout = pay(shop, shop.url)

    assert shop.find_element("tag name", "html").get_attribute("lang") == "es"
    assert "Abre ATH Móvil en tu teléfono" in text_of(shop, "[data-message]")
    assert "Cancelar el pago" in text_of(shop, "main")
    browser.screenshot(shop, "wait-es")
    assert checkout.payment.status == S.OPEN
    on_the_phone(shop, athm_customer.sandbox, "decline")
    until(shop, shows("h1", "Pago cancelado"), "the Spanish cancelled page never showed")
    browser.screenshot(shop, "cancelled-es")


def test_a_total_ath_movil_reports_otherwise_is_never_captured(shop, athm_customer, athm_signals):
    checkout = pay(shop, shop.url)
    ecommerce_id = str(checkout.payment.pk)
    athm_customer.sandbox.tamper(ecommerce_id, total=1)  # ATH Móvil now says $1.00

    on_the_phone(shop, athm_customer.sandbox, "approve")

    until(shop, shows("main", "We are checking your payment"), "the checking page never showed")
    assert "it was not completed" in text_of(shop, "main")
    assert athm_customer.sandbox.counts()["authorization"] == 0  # the money check: no capture
    assert Payment.objects.get().status == S.CONFIRM
    assert athm_signals.names == []


# -- Evertec's JavaScript button (the sandbox's stand-in for athmovil_base.js) -------------


def press_the_button(driver, base_url: str, *, total_in_browser: float | None = None) -> None:
    """The customer opens the order's button page, (maybe) rewrites the amount the page holds,
    as anyone can in the browser's console, and presses "Pay with ATH Móvil"."""
    from selenium.webdriver.common.by import By

    driver.get(base_url + "/shop/button/")
    until(driver, shows("#ATHMovil_Checkout_Button_payment", "Pay with ATH Móvil"))
    if total_in_browser is not None:
        driver.execute_script(f"window.ATHM_Checkout.total = {total_in_browser};")
    driver.find_element(By.CSS_SELECTOR, "#ATHMovil_Checkout_Button_payment button").click()
    until(driver, shows(".athm-modal", "confirm the payment"), "the button's window never opened")


def test_the_javascript_button_pays_and_reaches_the_shops_paid_page(
    shop, athm_customer, athm_signals
):
    press_the_button(shop, shop.url)
    assert "$12.50" in text_of(shop, ".athm-modal")
    browser.screenshot(shop, "button")

    on_the_phone(shop, athm_customer.sandbox, "approve")

    until(shop, at("/shop/paid/"), "the button's callback never led to the paid page")
    assert text_of(shop, "#order") == "Order order-7: paid"
    payment = Payment.objects.get()
    assert payment.status == S.COMPLETED
    assert payment.checkout.order_key == "order-7"
    assert athm_signals.names == ["payment_completed"]
    counts = athm_customer.sandbox.counts()
    assert (counts["payment"], counts["authorization"]) == (1, 1)  # the browser captured


def test_the_buttons_window_asks_for_the_phone_the_shop_did_not_give(
    shop, athm_customer, athm_signals
):
    from selenium.webdriver.common.by import By

    shop.get(shop.url + "/shop/button/?phone=ask")
    until(shop, shows("#ATHMovil_Checkout_Button_payment", "Pay with ATH Móvil"))
    shop.find_element(By.CSS_SELECTOR, "#ATHMovil_Checkout_Button_payment button").click()
    until(shop, shows(".athm-modal", "Your phone number with ATH Móvil"))
    shop.find_element(By.CSS_SELECTOR, ".athm-modal input[type=tel]").send_keys(PHONE)
    shop.find_element(By.CSS_SELECTOR, ".athm-modal button[type=submit]").click()
    until(shop, shows(".athm-modal", "confirm the payment of $12.50"))

    on_the_phone(shop, athm_customer.sandbox, "approve")

    until(shop, at("/shop/paid/"), "the button's callback never led to the paid page")
    assert Payment.objects.get().status == S.COMPLETED
    assert athm_signals.names == ["payment_completed"]


def test_a_tampered_button_amount_is_held_never_completed(shop, athm_customer, athm_signals):
    press_the_button(shop, shop.url, total_in_browser=1.00)
    assert "$1.00" in text_of(shop, ".athm-modal")

    # The phone asks for the browser's amount: the browser made the payment.
    on_the_phone(shop, athm_customer.sandbox, "approve", total="1.00")

    until(shop, shows("main", "We are checking your payment"), "the checking page never showed")
    payment = Payment.objects.get()
    assert payment.status == S.MISMATCHED != S.COMPLETED
    assert (payment.total, payment.remote_total) == (Decimal("12.50"), Decimal("1.00"))
    assert athm_signals.names == ["payment_mismatched"]
    browser.screenshot(shop, "checking")


def test_without_javascript_the_page_refreshes_itself_to_the_outcome(
    live_server, athm_settings, settings, athm_customer, athm_signals
):
    settings.ROOT_URLCONF = "tests.browser"
    settings.STATIC_ROOT = str(browser.STATIC)
    settings.ATHM_SYNC = {**settings.ATHM_SYNC, "CHECKOUT_POLL_INTERVAL": 0.5}
    driver = browser.chromium(javascript=False)
    try:
        from selenium.webdriver.common.by import By

        checkout = pay(driver, live_server.url)
        # Parsed as elements only when the page's scripts cannot run: JavaScript is off.
        assert driver.find_elements(By.CSS_SELECTOR, "noscript small")
        assert checkout.payment.status == S.OPEN
        on_the_phone(driver, athm_customer.sandbox, "approve")

        until(driver, at("/shop/paid/"), "the meta refresh never reached the paid page")
        assert Payment.objects.get().status == S.COMPLETED
        assert athm_signals.names == ["payment_completed"]
    finally:
        driver.quit()
