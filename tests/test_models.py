"""Payment and Refund models, the due query, track() and create_via_api()."""

from __future__ import annotations

import threading
import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from types import SimpleNamespace

import pytest
from django.contrib.auth import get_user_model
from django.db import IntegrityError, connection, transaction
from django.db.models.deletion import ProtectedError

from athm_sync import clock, reconcile
from athm_sync.managers import StatusIn, validate_new_payment
from athm_sync.models import Payment, Refund

ID = uuid.UUID("1f2e3d4c-5b6a-4978-8695-a4b3c2d1e0f9")
S = Payment.Status
FAKE_TOKEN = "eyJ.fake.jwt"


def make_payment(**fields) -> Payment:
    fields.setdefault("ecommerce_id", uuid.uuid4())
    fields.setdefault("total", Decimal("10.00"))
    return Payment.objects.create(**fields)


# --- model basics ----------------------------------------------------------------------------


def test_status_choices_and_groups():
    assert [value for value, _ in S.choices] == [
        "OPEN",
        "CONFIRM",
        "COMPLETED",
        "CANCEL",
        "EXPIRED",
        "MISMATCHED",
    ]
    assert S.CANCEL.label == "Cancelled"
    assert set(Payment.TERMINAL_STATUSES) == {"COMPLETED", "CANCEL", "EXPIRED", "MISMATCHED"}
    assert Payment(status=S.MISMATCHED).is_terminal and Payment(status=S.MISMATCHED).is_held
    assert set(Payment.ACTIVE_STATUSES) == {"OPEN", "CONFIRM"}
    assert Payment(status=S.COMPLETED).is_terminal
    assert not Payment(status=S.CONFIRM).is_terminal


def test_money_fields_are_two_place_decimals():
    for name in ("total", "subtotal", "tax", "fee", "net_amount", "total_refunded_amount"):
        field = Payment._meta.get_field(name)
        assert (field.max_digits, field.decimal_places) == (10, 2), name
        assert field.default == 0


@pytest.mark.django_db
def test_save_fills_expires_at_from_created_at_and_timeout():
    created = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)
    before = clock.now()
    payment = make_payment(created_at=created, timeout=300)
    payment.refresh_from_db()
    assert payment.expires_at == created + timedelta(seconds=300)
    assert payment.status == S.OPEN
    assert payment.items == []
    assert before <= payment.next_check_at <= clock.now()  # due at once
    assert payment.given_up_at is None


@pytest.mark.django_db
def test_str_and_repr_never_show_the_auth_token():
    payment = make_payment(ecommerce_id=ID, total=Decimal("12.50"), auth_token="eyJ.secret.jwt")
    payment.status = S.COMPLETED
    assert str(payment) == f"ATH Móvil payment {ID} COMPLETED $12.50"
    payment.auth_token = "eyJ.secret.jwt"
    assert "secret" not in repr(payment)
    assert "secret" not in str(payment)


# --- the auth token never lingers on a terminal row ------------------------------------------


@pytest.mark.django_db
@pytest.mark.parametrize("status", Payment.TERMINAL_STATUSES)
def test_auth_token_cleared_when_payment_becomes_terminal(status):
    payment = make_payment(auth_token="eyJ.jwt")
    payment.status = status
    payment.save()
    payment.refresh_from_db()
    assert payment.auth_token == ""


@pytest.mark.django_db
def test_auth_token_cleared_with_update_fields():
    payment = make_payment(auth_token="eyJ.jwt")
    payment.status = S.EXPIRED
    payment.save(update_fields=["status"])
    payment.refresh_from_db()
    assert (payment.status, payment.auth_token) == (S.EXPIRED, "")


@pytest.mark.django_db
def test_auth_token_kept_while_active():
    payment = make_payment(auth_token="eyJ.jwt")
    payment.status = S.CONFIRM
    payment.save()
    payment.refresh_from_db()
    assert payment.auth_token == "eyJ.jwt"


@pytest.mark.django_db
def test_database_refuses_a_terminal_row_with_an_auth_token():
    payment = make_payment(auth_token="eyJ.jwt")
    with pytest.raises(IntegrityError), transaction.atomic():
        Payment.objects.filter(pk=payment.pk).update(status=S.COMPLETED)
    payment.refresh_from_db()
    assert payment.status == S.OPEN


@pytest.mark.django_db
def test_database_refuses_an_unknown_status():
    payment = make_payment()
    with pytest.raises(IntegrityError), transaction.atomic():
        Payment.objects.filter(pk=payment.pk).update(status="PAID")


# --- track() ---------------------------------------------------------------------------------


@pytest.mark.django_db
def test_track_creates_an_open_row_due_now():
    before = clock.now()
    payment = Payment.objects.track(
        str(ID),
        total="12.50",
        subtotal=Decimal("11.00"),
        tax=Decimal("1.50"),
        metadata_1="order-17",
        metadata_2="web",
        items=[{"name": "Mofongo", "price": Decimal("11.00"), "quantity": 1}],
        timeout=300,
    )
    after = clock.now()
    payment.refresh_from_db()
    assert payment.ecommerce_id == ID
    assert payment.status == S.OPEN
    assert (payment.total, payment.subtotal, payment.tax) == (
        Decimal("12.50"),
        Decimal("11.00"),
        Decimal("1.50"),
    )
    assert (payment.metadata_1, payment.metadata_2) == ("order-17", "web")
    assert payment.items == [{"name": "Mofongo", "price": "11.00", "quantity": 1}]
    assert payment.timeout == 300
    assert before <= payment.created_at <= after
    assert payment.expires_at == payment.created_at + timedelta(seconds=300)
    assert before <= payment.next_check_at <= after
    assert list(Payment.objects.due()) == [payment]


@pytest.mark.django_db
def test_track_keeps_the_creation_time_the_button_reported():
    created = clock.now() - timedelta(minutes=3)
    payment = Payment.objects.track(ID, total=5, created_at=created)
    payment.refresh_from_db()
    assert payment.created_at == created
    assert payment.timeout == 600  # ATHM_SYNC["PAYMENT_TIMEOUT"] default
    assert payment.expires_at == created + timedelta(seconds=600)


@pytest.mark.django_db
def test_track_timeout_defaults_to_the_setting(settings):
    settings.ATHM_SYNC = {**settings.ATHM_SYNC, "PAYMENT_TIMEOUT": 180}
    payment = Payment.objects.track(ID, total=5)
    assert payment.timeout == 180


@pytest.mark.django_db
def test_track_twice_returns_the_same_row_unchanged():
    first = Payment.objects.track(ID, total="12.50", metadata_1="order-17")
    first.refresh_from_db()
    second = Payment.objects.track(ID, total=Decimal("12.5"), metadata_1="order-17")
    assert Payment.objects.count() == 1
    assert second.pk == first.pk
    second.refresh_from_db()
    assert second.updated_at == first.updated_at
    assert second.metadata_1 == "order-17"
    assert second.next_check_at == first.next_check_at


@pytest.mark.django_db
def test_track_with_a_conflicting_total_raises_and_changes_nothing():
    first = Payment.objects.track(ID, total="12.50")
    first.refresh_from_db()
    with pytest.raises(ValueError, match=r"12\.50.*13\.00"):
        Payment.objects.track(ID, total="13.00")
    assert Payment.objects.count() == 1
    row = Payment.objects.get()
    assert (row.total, row.updated_at) == (Decimal("12.50"), first.updated_at)


@pytest.mark.django_db
def test_track_does_not_touch_a_payment_that_moved_on():
    payment = Payment.objects.track(ID, total=10)
    payment.status = S.COMPLETED
    payment.save()
    payment.refresh_from_db()
    again = Payment.objects.track(ID, total=10)
    assert again.status == S.COMPLETED
    assert (again.updated_at, again.next_check_at) == (payment.updated_at, payment.next_check_at)
    assert list(Payment.objects.due()) == []


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"ecommerce_id": "abc"}, r"ecommerce_id must be a UUID, got 'abc'"),
        ({"ecommerce_id": 12345}, r"ecommerce_id must be a UUID, got 12345"),
        ({"total": 12.5}, r"total must be .*not the float 12\.5.*Decimal\(\"12\.5\"\)"),
        ({"total": "0.99"}, r"total must be from 1\.00 to 1500\.00, got 0\.99"),
        ({"total": "1500.01"}, r"total must be from 1\.00 to 1500\.00, got 1500\.01"),
        ({"total": "twelve"}, r"total must be an amount like 12\.50, got 'twelve'"),
        ({"total": "NaN"}, r"total must be a finite amount"),
        ({"total": True}, r"total must be a Decimal, int or str amount, not bool"),
        ({"total": None}, r"total must be a Decimal, int or str amount, not NoneType"),
        ({"tax": Decimal("-0.01")}, r"tax must be from 0 to .*, got -0\.01"),
        ({"subtotal": "-1"}, r"subtotal must be from 0 to .*, got -1\.00"),
        ({"metadata_1": "x" * 41}, r"metadata_1 must be at most 40 characters.*got 41"),
        ({"metadata_2": "y" * 41}, r"metadata_2 must be at most 40 characters.*got 41"),
        ({"metadata_1": 7}, r"metadata_1 must be a str, not int"),
        ({"timeout": 119}, r"timeout must be from 120 to 600 seconds.*got 119"),
        ({"timeout": 601}, r"timeout must be from 120 to 600 seconds.*got 601"),
        ({"timeout": 300.0}, r"timeout must be a whole number of seconds, got 300\.0"),
        ({"items": {"name": "x"}}, r"items must be a list of dicts"),
        ({"items": [{"x": object()}]}, r"items must be JSON-serialisable"),
        ({"created_at": datetime(2025, 1, 1)}, r"created_at must be timezone-aware"),
    ],
)
def test_track_validation_errors_write_nothing(kwargs, message, settings):
    settings.USE_TZ = True  # a naive created_at is refused only there (tests/test_naive_time.py)
    arguments = {"ecommerce_id": ID, "total": "10.00", **kwargs}
    ecommerce_id = arguments.pop("ecommerce_id")
    with pytest.raises(ValueError, match=message):
        Payment.objects.track(ecommerce_id, **arguments)
    assert Payment.objects.count() == 0


@pytest.mark.django_db
def test_track_accepts_the_bounds_and_uuid_objects():
    low = Payment.objects.track(uuid.uuid4(), total="1.00", timeout=120, metadata_1="x" * 40)
    high = Payment.objects.track(uuid.uuid4(), total=1500, timeout=600, tax=0)
    assert (low.total, high.total) == (Decimal("1.00"), Decimal("1500.00"))
    assert Payment.objects.count() == 2


@pytest.mark.parametrize(
    ("given", "stored"),
    [
        ("10.005", Decimal("10.01")),  # half up, not banker's rounding
        ("10.015", Decimal("10.02")),
        ("10.004", Decimal("10.00")),
        (Decimal("2.675"), Decimal("2.68")),
        (" 3 ", Decimal("3.00")),
        (7, Decimal("7.00")),
        ("0.995", Decimal("1.00")),  # the rounded amount is what is checked and sent
    ],
)
def test_money_rounds_half_up_to_cents(given, stored):
    cleaned = validate_new_payment(total=given, tax=given, timeout=600)
    assert cleaned.total == stored
    assert cleaned.tax == stored
    assert cleaned.total.as_tuple().exponent == -2


@pytest.mark.django_db
def test_rounded_amounts_are_stored():
    payment = Payment.objects.track(ID, total="10.005", subtotal="9.125", tax="0.875")
    payment.refresh_from_db()
    assert (payment.total, payment.subtotal, payment.tax) == (
        Decimal("10.01"),
        Decimal("9.13"),
        Decimal("0.88"),
    )


# --- due() -----------------------------------------------------------------------------------


@pytest.mark.django_db
def test_due_returns_only_active_payments_whose_check_time_has_come():
    now = clock.now()
    past, future = now - timedelta(minutes=5), now + timedelta(minutes=5)
    open_due = make_payment(status=S.OPEN, next_check_at=past)
    confirm_due = make_payment(status=S.CONFIRM, next_check_at=past - timedelta(minutes=1))
    exactly_now = make_payment(status=S.OPEN, next_check_at=now)
    make_payment(status=S.OPEN, next_check_at=future)
    make_payment(status=S.OPEN, next_check_at=past, given_up_at=past)
    for status in Payment.TERMINAL_STATUSES:
        make_payment(status=status, next_check_at=past)
    assert list(Payment.objects.due(now)) == [confirm_due, open_due, exactly_now]
    assert list(Payment.objects.due(future)) == [
        confirm_due,
        open_due,
        exactly_now,
        *Payment.objects.filter(next_check_at=future),
    ]


@pytest.mark.django_db
def test_due_defaults_to_now():
    due = make_payment(next_check_at=clock.now() - timedelta(seconds=1))
    make_payment(next_check_at=clock.now() + timedelta(hours=1))
    assert list(Payment.objects.due()) == [due]


def test_due_filters_on_the_partial_index_condition():
    index = next(i for i in Payment._meta.indexes if i.name == "athm_payment_due_idx")
    assert index.fields == ["next_check_at", "ecommerce_id"]  # the order of Payment.objects.due()
    assert dict(index.condition.children) == {
        "status__in": list(Payment.ACTIVE_STATUSES),
        "given_up_at__isnull": True,
    }
    sql, params = Payment.objects.due(clock.now()).query.sql_with_params()
    # Literals, not bound parameters: SQLite only matches a partial index on literal terms.
    assert """"athm_sync_payment"."status" IN ('OPEN', 'CONFIRM')""" in sql
    assert '"athm_sync_payment"."given_up_at" IS NULL' in sql
    assert "OPEN" not in params


def test_status_in_refuses_anything_but_status_constants():
    with pytest.raises(ValueError, match="not a status constant"):
        StatusIn(["OPEN'); DROP TABLE x; --"])


@pytest.mark.django_db
def test_indexes_exist_in_the_database():
    with connection.cursor() as cursor:
        constraints = connection.introspection.get_constraints(cursor, Payment._meta.db_table)
    assert constraints["athm_payment_due_idx"]["columns"] == ["next_check_at", "ecommerce_id"]
    assert constraints["athm_payment_due_idx"]["index"]
    assert constraints["athm_payment_reference_idx"]["columns"] == ["reference_number"]
    assert constraints["athm_payment_metadata_1_idx"]["columns"] == ["metadata_1"]


@pytest.mark.django_db
def test_due_query_uses_the_partial_index_on_postgresql():
    if connection.vendor != "postgresql":
        pytest.skip("EXPLAIN check is for PostgreSQL")
    now = clock.now()
    for status in S.values:
        make_payment(status=status, next_check_at=now - timedelta(minutes=1))
    query = Payment.objects.due(now)
    with transaction.atomic(), connection.cursor() as cursor:
        # On a tiny table a sequential scan is cheaper; forbid it to see whether the index fits.
        cursor.execute("SET LOCAL enable_seqscan = off")
        plan = query.explain()
    assert "athm_payment_due_idx" in plan, plan


@pytest.mark.django_db
def test_a_claim_reads_its_batch_from_the_index_in_order_on_postgresql():
    """The claim's query (due, lease free, locked, a batch): an ordered scan of the partial
    index that stops at the batch, with no sort of every due row."""
    if connection.vendor != "postgresql":
        pytest.skip("EXPLAIN check is for PostgreSQL")
    now = clock.now()
    for status in S.values:
        for _ in range(5):
            make_payment(status=status, next_check_at=now - timedelta(minutes=1))
    query = reconcile.claimable(now).values_list("pk", flat=True)[:4]
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute("SET LOCAL enable_seqscan = off")
        cursor.execute("SET LOCAL enable_bitmapscan = off")
        sql, params = query.query.sql_with_params()
        cursor.execute(f"EXPLAIN {sql}", params)
        plan = "\n".join(row[0] for row in cursor.fetchall())
    assert "Index Scan using athm_payment_due_idx" in plan, plan
    assert "Sort" not in plan, plan


@pytest.mark.django_db
def test_due_query_uses_the_partial_index_on_sqlite():
    if connection.vendor != "sqlite":
        pytest.skip("EXPLAIN QUERY PLAN check is for SQLite")
    plan = Payment.objects.due(clock.now()).explain()
    assert "athm_payment_due_idx" in plan, plan


# --- Refund ----------------------------------------------------------------------------------


@pytest.mark.django_db
def test_refunds_related_name_ordering_and_shared_reference_numbers():
    payment = make_payment(status=S.COMPLETED, reference_number="215070443-abc")
    later = Refund.objects.create(
        payment=payment,
        amount=Decimal("2.00"),
        reference_number="215070443-abc",
        transaction_date=datetime(2025, 1, 2, tzinfo=UTC),
    )
    earlier = Refund.objects.create(
        payment=payment,
        amount=Decimal("1.00"),
        reference_number="215070443-abc",  # ATH Móvil reuses the payment's reference number
        transaction_date=datetime(2025, 1, 1, tzinfo=UTC),
    )
    assert list(payment.refunds.all()) == [earlier, later]
    assert str(earlier) == f"ATH Móvil refund $1.00 of payment {payment.pk}"


@pytest.mark.django_db
def test_a_payment_with_refunds_cannot_be_deleted():
    payment = make_payment(status=S.COMPLETED)
    Refund.objects.create(payment=payment, amount=Decimal("1.00"))
    with pytest.raises(ProtectedError):
        payment.delete()


# --- create_via_api() ------------------------------------------------------------------------


class FakeClient:
    """Stands in for athm_sync.client.ATHMovilClient."""

    def __init__(self, ecommerce_id=ID, auth_token=FAKE_TOKEN, error=None):
        self.ecommerce_id, self.auth_token, self.error = ecommerce_id, auth_token, error
        self.calls: list[dict] = []

    def create_payment(self, **kwargs):
        self.calls.append(kwargs)
        if self.error is not None:
            raise self.error
        return SimpleNamespace(ecommerce_id=self.ecommerce_id, auth_token=self.auth_token)


@pytest.mark.django_db
def test_create_via_api_stores_the_payment_and_its_auth_token():
    client = FakeClient()
    before = clock.now()
    payment = Payment.objects.create_via_api(
        total="12.50",
        subtotal="11.00",
        tax="1.50",
        metadata_1="order-17",
        items=[{"name": "Mofongo", "price": "11.00"}],
        phone_number="(787) 555-1234",
        timeout=300,
        client=client,
    )
    assert client.calls == [
        {
            "total": Decimal("12.50"),
            "subtotal": Decimal("11.00"),
            "tax": Decimal("1.50"),
            "metadata_1": "order-17",
            "metadata_2": "",
            "items": [{"name": "Mofongo", "price": "11.00"}],
            "phone_number": "7875551234",
            "timeout": 300,
        }
    ]
    payment.refresh_from_db()
    assert payment.ecommerce_id == ID
    assert payment.auth_token == "eyJ.fake.jwt"
    assert payment.status == S.OPEN
    assert payment.total == Decimal("12.50")
    assert before <= payment.created_at <= clock.now()
    assert payment.expires_at == payment.created_at + timedelta(seconds=300)
    assert list(Payment.objects.due()) == [payment]


@pytest.mark.django_db
def test_create_via_api_defaults():
    client = FakeClient(ecommerce_id=str(ID))
    payment = Payment.objects.create_via_api(total=5, client=client)
    call = client.calls[0]
    assert (call["subtotal"], call["tax"], call["items"]) == (Decimal("0.00"), Decimal("0.00"), [])
    assert call["phone_number"] is None
    assert call["timeout"] == 600
    assert payment.ecommerce_id == ID


@pytest.mark.django_db
def test_create_via_api_stores_nothing_when_the_client_raises():
    class FakeATHMovilError(Exception):
        pass

    client = FakeClient(error=FakeATHMovilError("BTRA_0401 credentials rejected"))
    with pytest.raises(FakeATHMovilError, match="BTRA_0401"):
        Payment.objects.create_via_api(total="12.50", client=client)
    assert len(client.calls) == 1
    assert Payment.objects.count() == 0


@pytest.mark.django_db
@pytest.mark.parametrize(
    "kwargs",
    [
        {"total": 12.5},
        {"total": "0.99"},
        {"total": "10", "tax": "-1"},
        {"total": "10", "metadata_2": "z" * 41},
        {"total": "10", "timeout": 601},
        {"total": "10", "phone_number": "555-12"},
    ],
)
def test_create_via_api_validates_before_calling_the_client(kwargs):
    client = FakeClient()
    with pytest.raises(ValueError):
        Payment.objects.create_via_api(client=client, **kwargs)
    assert client.calls == []
    assert Payment.objects.count() == 0


@pytest.mark.django_db
def test_create_via_api_rejects_a_malformed_id_from_the_client():
    with pytest.raises(ValueError, match="ecommerce_id must be a UUID"):
        Payment.objects.create_via_api(total=5, client=FakeClient(ecommerce_id="nope"))
    assert Payment.objects.count() == 0


# --- admin -----------------------------------------------------------------------------------


@pytest.fixture
def admin_client_logged_in(client, db):
    user = get_user_model().objects.create_superuser("admin", "admin@example.com", "pw")
    client.force_login(user)
    return client


@pytest.mark.django_db
def test_admin_is_read_only_and_hides_the_auth_token(admin_client_logged_in):
    payment = make_payment(
        ecommerce_id=ID, metadata_1="order-17", auth_token="eyJ.secret.jwt", total=Decimal("3")
    )
    Refund.objects.create(payment=make_payment(status=S.COMPLETED), amount=Decimal("1.00"))
    client = admin_client_logged_in
    listing = client.get("/admin/athm_sync/payment/")
    assert listing.status_code == 200
    assert str(ID) in listing.content.decode()
    for term in ("order-17", str(ID)[:8], str(ID)):
        found = client.get("/admin/athm_sync/payment/", {"q": term})
        assert found.status_code == 200
        assert str(ID) in found.content.decode(), term
    page = client.get(f"/admin/athm_sync/payment/{payment.pk}/change/")
    assert page.status_code == 200
    html = page.content.decode()
    assert "order-17" in html
    assert "secret" not in html
    assert "auth_token" not in html
    assert client.get("/admin/athm_sync/payment/add/").status_code == 403
    assert client.get(f"/admin/athm_sync/payment/{payment.pk}/delete/").status_code == 403
    assert client.get("/admin/athm_sync/refund/").status_code == 200
    response = client.post(f"/admin/athm_sync/payment/{payment.pk}/change/", {"total": "1"})
    assert response.status_code == 403
    payment.refresh_from_db()
    assert payment.total == Decimal("3.00")


@pytest.mark.django_db
def test_admin_shows_and_filters_held_and_given_up_payments(admin_client_logged_in):
    held = make_payment(
        status=S.MISMATCHED,
        total=Decimal("100.00"),
        remote_total=Decimal("1.00"),
        mismatch_reason="total: ATH Móvil says 1.00, the shop stored 100.00",
    )
    given_up = make_payment(given_up_at=clock.now(), last_error="given up: still OPEN")
    followed = make_payment()
    client = admin_client_logged_in

    def listed(**query) -> set[str]:
        html = client.get("/admin/athm_sync/payment/", query).content.decode()
        return {str(p.pk) for p in (held, given_up, followed) if str(p.pk) in html}

    assert listed(status__exact="MISMATCHED") == {str(held.pk)}
    assert listed(given_up="yes") == {str(given_up.pk)}
    assert listed(given_up="no") == {str(held.pk), str(followed.pk)}
    page = client.get(f"/admin/athm_sync/payment/{held.pk}/change/").content.decode()
    assert "Held: does not match" in page and "Held: what ATH Móvil reported" in page
    assert "the shop stored 100.00" in page
    other = client.get(f"/admin/athm_sync/payment/{followed.pk}/change/").content.decode()
    assert "Held: what ATH Móvil reported" not in other


# --- concurrency -----------------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_concurrent_track_calls_make_one_row():
    threads_count = 4
    barrier = threading.Barrier(threads_count)
    results, errors = [], []

    def track():
        try:
            barrier.wait(timeout=5)
            results.append(Payment.objects.track(ID, total="12.50"))
        except Exception as exc:  # reported by the assertion below
            errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=track) for _ in range(threads_count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=20)
    assert errors == []
    assert Payment.objects.count() == 1
    assert {payment.pk for payment in results} == {ID}


# --- create_via_api() through the real client and the sandbox (loopback only) ----------------


@pytest.fixture
def own_sandbox(settings):
    from athm_sync.sandbox import SandboxServer

    server = SandboxServer(port=0).start()
    settings.ATHM_SYNC = {**settings.ATHM_SYNC, "API_BASE_URL": server.url}
    try:
        yield server
    finally:
        server.stop()


@pytest.mark.django_db
def test_create_via_api_with_the_real_client_and_the_sandbox(own_sandbox):
    payment = Payment.objects.create_via_api(total="12.50", tax="1.00", metadata_1="order-17")
    payment.refresh_from_db()
    remote = own_sandbox.state.payment_data(str(payment.ecommerce_id))
    assert remote["ecommerceStatus"] == "OPEN"
    assert Decimal(str(remote["total"])) == payment.total == Decimal("12.50")
    assert remote["metadata1"] == "order-17"
    assert payment.auth_token  # the JWT the sandbox answered with, kept to capture


@pytest.mark.django_db
@pytest.mark.parametrize("phone_number", [None, "", "   "])
def test_create_via_api_without_a_phone_number_pushes_to_no_phone(own_sandbox, phone_number):
    payment = Payment.objects.create_via_api(total="12.50", phone_number=phone_number)
    remote = own_sandbox.payment(str(payment.ecommerce_id))
    assert remote["status"] == "OPEN" and remote["phoneNumber"] == ""
    assert own_sandbox.phones() == []  # no payment request reached any phone
    assert Payment.objects.get().auth_token  # stored, ready to be sent or captured


@pytest.mark.django_db
def test_create_via_api_with_rejected_credentials_stores_nothing(own_sandbox, settings):
    from athm_sync.errors import ATHMovilError

    settings.ATHM_SYNC = {**settings.ATHM_SYNC, "PUBLIC_TOKEN": "wrong-token"}
    with pytest.raises(ATHMovilError):
        Payment.objects.create_via_api(total="12.50")
    assert Payment.objects.count() == 0
