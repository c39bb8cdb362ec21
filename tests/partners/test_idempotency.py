"""Idempotency-Key on partner POST/PATCH (docs/partner-api.md).

`call` stands for the endpoint: it creates a real row (a Tenant, via the factory) so the tests
can count effects. The PostgreSQL tests use real threads and real transactions.
"""

from __future__ import annotations

import datetime as dt
import threading
import uuid
from collections.abc import Callable
from decimal import Decimal

import pytest
import time_machine
from django.db import connection
from django.utils import timezone
from rest_framework.renderers import JSONRenderer
from rest_framework.response import Response
from rest_framework.test import APIRequestFactory
from rest_framework.views import APIView

from core import errors
from core.api.idempotency import idempotency_purge, idempotent_call
from partners import tasks
from partners.models import IdempotencyRecord, Tenant
from tests.factories import TenantFactory

PATH = "/v1/partner/accounts"
BODY = b'{"external_id": "acc-1", "starting_balance": "10000.00"}'


class Effect:
    """A stand-in endpoint: each run creates one Tenant row and answers 201 with its id."""

    def __init__(self, *, status: int = 201, fail: Exception | None = None) -> None:
        self.runs = 0
        self.status = status
        self.fail = fail

    def __call__(self) -> Response:
        self.runs += 1
        created = TenantFactory()
        if self.fail is not None:
            raise self.fail
        return Response({"id": created.pk, "slug": created.slug}, status=self.status)


def run(
    tenant: Tenant,
    call: Callable[[], Response],
    *,
    key: str | None = "key-1",
    body: bytes = BODY,
    method: str = "POST",
    path: str = PATH,
) -> Response:
    return idempotent_call(tenant=tenant, key=key, method=method, path=path, body=body, call=call)


def rendered(response: Response) -> bytes:
    return JSONRenderer().render(response.data)


pytestmark = pytest.mark.django_db


# --- replay, reuse, validation ----------------------------------------------------------------


def test_without_a_key_every_call_runs(tenant):
    effect = Effect()
    run(tenant, effect, key=None)
    run(tenant, effect, key=None)

    assert effect.runs == 2
    assert not IdempotencyRecord.objects.exists()


def test_same_key_and_body_runs_once_and_replays_status_and_body(tenant):
    effect = Effect()
    tenants_before = Tenant.objects.count()

    first = run(tenant, effect)
    second = run(tenant, effect)
    third = run(tenant, effect)

    assert effect.runs == 1
    assert Tenant.objects.count() == tenants_before + 1
    assert first.status_code == second.status_code == third.status_code == 201
    assert rendered(second) == rendered(third) == rendered(first)
    assert "Idempotent-Replayed" not in first
    assert second["Idempotent-Replayed"] == "true"
    assert third["Idempotent-Replayed"] == "true"


def test_same_key_with_a_different_body_is_rejected(tenant):
    effect = Effect()
    run(tenant, effect)

    with pytest.raises(errors.IdempotencyKeyReused) as caught:
        run(tenant, effect, body=b'{"external_id": "acc-2", "starting_balance": "10000.00"}')

    assert caught.value.status == 422
    assert caught.value.code == "IDEMPOTENCY_KEY_REUSED"
    assert effect.runs == 1


@pytest.mark.parametrize(
    ("method", "path"), [("PATCH", PATH), ("POST", "/v1/partner/users")], ids=["method", "path"]
)
def test_same_key_on_another_endpoint_is_rejected(tenant, method, path):
    effect = Effect()
    run(tenant, effect)

    with pytest.raises(errors.IdempotencyKeyReused):
        run(tenant, effect, method=method, path=path)
    assert effect.runs == 1


def test_json_key_order_and_whitespace_do_not_make_a_different_request(tenant):
    effect = Effect()
    run(tenant, effect, body=b'{"a": 1, "b": {"y": [1, 2], "x": "\\u00e9"}, "c": 1.50}')

    replay = run(tenant, effect, body=b'{ "c":1.50,\n"b":{"x":"\xc3\xa9","y":[1,2]},  "a":1 }')

    assert effect.runs == 1
    assert replay["Idempotent-Replayed"] == "true"


def test_json_numbers_are_compared_exactly_not_as_floats(tenant):
    effect = Effect()
    run(tenant, effect, body=b'{"amount": 0.1}')

    with pytest.raises(errors.IdempotencyKeyReused):
        run(tenant, effect, body=b'{"amount": 0.1000000000000000000001}')


def test_a_body_that_is_not_json_is_compared_byte_for_byte(tenant):
    effect = Effect()
    run(tenant, effect, body=b"not json {")

    assert run(tenant, effect, body=b"not json {")["Idempotent-Replayed"] == "true"
    with pytest.raises(errors.IdempotencyKeyReused):
        run(tenant, effect, body=b"not  json {")
    assert effect.runs == 1


@pytest.mark.parametrize(
    "key",
    ["", " ", "has space", "tab\there", "x" * 256, "caf\u00e9", "nul\x00", "del\x7f", "\u2028"],
    ids=["empty", "space", "inner-space", "tab", "too-long", "non-ascii", "nul", "del", "ls"],
)
def test_an_invalid_key_is_a_validation_error_and_nothing_runs(tenant, key):
    effect = Effect()

    with pytest.raises(errors.ValidationFailed) as caught:
        run(tenant, effect, key=key)

    assert "Idempotency-Key" in caught.value.details
    assert effect.runs == 0


@pytest.mark.parametrize("key", ["x" * 255, "!", "~", "0b1e2c3d-uuid-like_KEY.v1:/+="])
def test_keys_of_printable_ascii_up_to_255_chars_are_accepted(tenant, key):
    effect = Effect()
    run(tenant, effect, key=key)
    run(tenant, effect, key=key)
    assert effect.runs == 1


def test_keys_are_scoped_per_tenant(tenant, other_tenant):
    ours, theirs = Effect(), Effect()

    first = run(tenant, ours)
    other = run(other_tenant, theirs)

    assert ours.runs == 1 and theirs.runs == 1
    assert "Idempotent-Replayed" not in other
    assert rendered(run(tenant, ours)) == rendered(first)
    assert rendered(run(other_tenant, theirs)) == rendered(other)
    assert IdempotencyRecord.objects.filter(key="key-1").count() == 2


# --- what gets stored -------------------------------------------------------------------------


def test_an_error_is_not_stored_and_a_retry_runs(tenant):
    failing = Effect(fail=errors.ExternalIdConflict())
    tenants_before = Tenant.objects.count()

    with pytest.raises(errors.ExternalIdConflict):
        run(tenant, failing)

    assert not IdempotencyRecord.objects.exists()
    assert Tenant.objects.count() == tenants_before  # the effect rolled back with it

    retry = Effect()
    response = run(tenant, retry)
    assert retry.runs == 1
    assert response.status_code == 201
    assert "Idempotent-Replayed" not in response
    assert IdempotencyRecord.objects.count() == 1


def test_a_non_2xx_response_is_not_stored(tenant):
    effect = Effect(status=202)
    run(tenant, effect)
    assert IdempotencyRecord.objects.get().response_status == 202

    refused = Effect(status=409)
    run(tenant, refused, key="key-2")
    run(tenant, refused, key="key-2")
    assert refused.runs == 2
    assert not IdempotencyRecord.objects.filter(key="key-2").exists()


def test_record_is_kept_for_the_configured_ttl(tenant, settings):
    settings.IDEMPOTENCY_TTL_HOURS = 24
    before = timezone.now()
    run(tenant, Effect())
    record = IdempotencyRecord.objects.get()

    assert record.expires_at - record.created_at == dt.timedelta(hours=24)
    assert record.created_at >= before
    assert (record.tenant_id, record.key, record.method, record.path) == (
        tenant.pk,
        "key-1",
        "POST",
        PATH,
    )


def test_after_expiry_the_same_key_runs_anew(tenant, settings):
    settings.IDEMPOTENCY_TTL_HOURS = 24
    effect = Effect()
    first = run(tenant, effect)

    with time_machine.travel(timezone.now() + dt.timedelta(hours=24, seconds=1)):
        again = run(tenant, effect, body=b'{"something": "else"}')

    assert effect.runs == 2
    assert "Idempotent-Replayed" not in again
    assert again.data["id"] != first.data["id"]
    assert IdempotencyRecord.objects.count() == 1  # the expired record was replaced


class EchoApi(APIView):
    """A real DRF view whose body holds every type an endpoint may return."""

    authentication_classes = ()
    permission_classes = ()
    runs = 0

    def post(self, request):
        return idempotent_call(
            tenant=Tenant.objects.get(slug="acme"),
            key=request.headers.get("Idempotency-Key"),
            method=request.method,
            path=request.path,
            body=request._request.body,
            call=self.handle,
        )

    def handle(self) -> Response:
        EchoApi.runs += 1
        return Response(
            {
                "zeta": "last key first",
                "id": uuid.UUID("6f1c1d5e-1f7e-4d0e-9a56-7b3c1a0f2e11"),
                "balance": "10000.00",
                "raw_decimal": Decimal("12.3400"),
                "at": dt.datetime(2025, 1, 2, 3, 4, 5, 123456, tzinfo=dt.UTC),
                "on": dt.date(2025, 1, 2),
                "ratio": 0.1 + 0.2,
                "big": 2**63 + 1,
                "text": 'Zürich € \u2028 "quoted" \\ 😀',
                "nested": {"b": [1, {"y": None, "x": True}], "a": []},
                "a": 1,
            },
            status=201,
        )


def test_the_replayed_body_is_byte_identical_to_the_original(tenant):
    EchoApi.runs = 0
    factory = APIRequestFactory()
    view = EchoApi.as_view()

    def post():
        request = factory.post(
            PATH, data=BODY, content_type="application/json", HTTP_IDEMPOTENCY_KEY="k-echo"
        )
        return view(request).render()

    original, replay = post(), post()

    assert EchoApi.runs == 1
    assert replay.status_code == original.status_code == 201
    assert replay.content == original.content
    assert replay["Idempotent-Replayed"] == "true"


def test_effect_and_record_roll_back_together(tenant):
    """The effect happened inside `call`, then `call` failed: neither the row nor a record
    survives (savepoint here; a real transaction in the PostgreSQL test below)."""
    tenants_before = Tenant.objects.count()

    with pytest.raises(RuntimeError):
        run(tenant, Effect(fail=RuntimeError("boom after the write")))

    assert Tenant.objects.count() == tenants_before
    assert not IdempotencyRecord.objects.exists()


# --- purge ------------------------------------------------------------------------------------


def test_purge_deletes_only_expired_records(tenant, settings):
    settings.IDEMPOTENCY_TTL_HOURS = 24
    run(tenant, Effect(), key="old-1")
    run(tenant, Effect(), key="old-2")
    with time_machine.travel(timezone.now() + dt.timedelta(hours=12)):
        run(tenant, Effect(), key="fresh")

    with time_machine.travel(timezone.now() + dt.timedelta(hours=24, seconds=1)):
        assert idempotency_purge() == 2
        assert idempotency_purge() == 0

    assert list(IdempotencyRecord.objects.values_list("key", flat=True)) == ["fresh"]


def test_purge_task_is_the_one_beat_schedules_and_calls_the_service(tenant, settings):
    assert (
        tasks.idempotency_purge.name == settings.CELERY_BEAT_SCHEDULE["idempotency-purge"]["task"]
    )
    run(tenant, Effect())

    with time_machine.travel(
        timezone.now() + dt.timedelta(hours=settings.IDEMPOTENCY_TTL_HOURS + 1)
    ):
        assert tasks.idempotency_purge.apply().get() == 1

    assert not IdempotencyRecord.objects.exists()


# --- concurrency ------------------------------------------------------------------------------


def _start_blocked_first_call(
    tenant: Tenant, key: str
) -> tuple[threading.Thread, threading.Event, threading.Event, dict]:
    """Start a first call in a thread that stays inside `call` until `release` is set."""
    entered, release = threading.Event(), threading.Event()
    outcome: dict = {}

    def blocked() -> Response:
        created = TenantFactory()
        entered.set()
        assert release.wait(10)
        return Response({"id": created.pk}, status=201)

    def first() -> None:
        try:
            outcome["response"] = run(tenant, blocked, key=key)
        except Exception as exc:  # surfaced by the test's assertions
            outcome["error"] = exc
        finally:
            connection.close()

    thread = threading.Thread(target=first)
    thread.start()
    assert entered.wait(10), "the first call never reached its effect"
    return thread, entered, release, outcome


@pytest.mark.django_db(transaction=True)
class TestPostgres:
    def test_same_key_while_the_first_runs_is_in_use_without_waiting(self, tenant):
        thread, _entered, release, outcome = _start_blocked_first_call(tenant, "in-flight")
        try:
            second = Effect()
            with pytest.raises(errors.IdempotencyKeyInUse):
                run(tenant, second, key="in-flight")
            assert second.runs == 0

            # another key is not held up by the first one
            other = run(tenant, Effect(), key="another-key")
            assert other.status_code == 201
        finally:
            release.set()
            thread.join(10)

        assert "error" not in outcome, outcome
        third = Effect()
        replay = run(tenant, third, key="in-flight")
        assert third.runs == 0
        assert replay["Idempotent-Replayed"] == "true"
        assert replay.data == outcome["response"].data
        assert IdempotencyRecord.objects.filter(tenant=tenant).count() == 2

    def test_concurrent_duplicates_cause_exactly_one_effect(self, tenant):
        workers = 12
        barrier = threading.Barrier(workers)
        effect = Effect()
        effect_lock = threading.Lock()
        outcomes: list[str] = []

        def slow_effect() -> Response:
            with effect_lock:
                response = effect()
            threading.Event().wait(0.2)  # keep the key busy while the others arrive
            return response

        def worker() -> None:
            try:
                barrier.wait()
                response = run(tenant, slow_effect, key="dup")
                outcomes.append("replayed" if "Idempotent-Replayed" in response else "ran")
            except errors.IdempotencyKeyInUse:
                outcomes.append("in_use")
            finally:
                connection.close()

        tenants_before = Tenant.objects.count()
        threads = [threading.Thread(target=worker) for _ in range(workers)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(20)

        assert len(outcomes) == workers
        assert outcomes.count("ran") == 1
        assert effect.runs == 1
        assert Tenant.objects.count() == tenants_before + 1
        assert IdempotencyRecord.objects.filter(key="dup").count() == 1

    def test_effect_and_record_commit_together_or_not_at_all(self, tenant):
        tenants_before = Tenant.objects.count()

        with pytest.raises(RuntimeError):
            run(tenant, Effect(fail=RuntimeError("boom after the write")), key="atomic")
        assert Tenant.objects.count() == tenants_before
        assert not IdempotencyRecord.objects.filter(key="atomic").exists()

        response = run(tenant, Effect(), key="atomic")
        # read back from a fresh connection in another thread: both are committed
        seen: dict = {}

        def read() -> None:
            try:
                seen["tenant"] = Tenant.objects.filter(pk=response.data["id"]).exists()
                seen["record"] = IdempotencyRecord.objects.filter(key="atomic").exists()
            finally:
                connection.close()

        reader = threading.Thread(target=read)
        reader.start()
        reader.join(10)
        assert seen == {"tenant": True, "record": True}

    def test_the_replayed_body_is_byte_identical_on_jsonb(self, tenant):
        test_the_replayed_body_is_byte_identical_to_the_original(tenant)
