"""Idempotency-Key for partner POST and PATCH (docs/partner-api.md) and for the native trader
API's POST and DELETE.

Same key + same request → the first 2xx status and body are replayed; same key + different
request → 422 IDEMPOTENCY_KEY_REUSED; same key while the first request is still running →
409 IDEMPOTENCY_KEY_IN_USE. Keys are scoped per tenant (partner API) or per trader user
(trader API) and kept IDEMPOTENCY_TTL_HOURS.

The records are rows of settings.IDEMPOTENCY_RECORD_MODEL (partners.IdempotencyRecord: its
table predates this module), resolved through the app registry as Django resolves
AUTH_USER_MODEL, so this module imports no app. The model has nullable `tenant` and `user`
scope keys and the fields written below.

The record is written in the same database transaction as the effect, so both commit or
neither does. Errors are not recorded: an error means the transaction rolled back, nothing was
written, and a retry with the same key is safe and executes anew.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from collections.abc import Callable
from decimal import Decimal
from typing import Any

from django.apps import apps
from django.conf import settings
from django.db import connection, models, transaction
from django.utils import timezone
from rest_framework.response import Response
from rest_framework.utils.encoders import JSONEncoder as DrfJSONEncoder

from core import errors

KEY_MAX_LENGTH = 255
REPLAYED_HEADER = "Idempotent-Replayed"
PURGE_BATCH_SIZE = 5000


def record_model() -> type[models.Model]:
    """The model holding the records (settings.IDEMPOTENCY_RECORD_MODEL)."""
    return apps.get_model(settings.IDEMPOTENCY_RECORD_MODEL, require_ready=True)


def idempotent_call(
    *,
    tenant: Any = None,
    user: Any = None,
    key: str | None,
    method: str,
    path: str,
    body: bytes,
    call: Callable[[], Response],
    commit_on: tuple[type[BaseException], ...] = (),
) -> Response:
    """Run `call` at most once per (scope, Idempotency-Key) and replay its result. The scope is
    `tenant` (partner API) or `user` (trader API): exactly one of them.

    `call` must do its writes on the default database connection: it runs inside this
    function's `transaction.atomic()`, and the IdempotencyRecord is inserted in that same
    transaction, so the effect and the record commit together or not at all.

    Locking: a non-blocking lock per (tenant, key), `pg_try_advisory_xact_lock`, is held for
    the whole transaction. A second request with the same key never waits; it gets
    IdempotencyKeyInUse (409) while the first runs.

    Idempotency: with `key` None this is just `call()`. A stored, unexpired record with the same
    fingerprint (method, path, canonical body) is replayed with `Idempotent-Replayed: true` and
    `call` is not run; a different fingerprint raises IdempotencyKeyReused (422). Only 2xx
    responses are stored; if `call` raises, the exception propagates, the transaction rolls back
    and nothing is stored — except for exceptions in `commit_on`: their effects are committed
    (the order engine stores some rejections on purpose, see docs/fill-model.md), no
    record is stored, and the exception propagates after the commit.

    Raises ValidationFailed for a key that is not 1-255 printable ASCII characters without
    spaces.
    """
    if (tenant is None) == (user is None):
        raise ValueError("idempotent_call needs exactly one scope: tenant or user")
    if key is None:
        return call()
    _validate_key(key)
    fingerprint = request_fingerprint(method=method, path=path, body=body)
    scope: dict[str, Any] = {"tenant": tenant} if tenant is not None else {"user": user}
    lock_id = _lock_id(tenant.pk, key) if tenant is not None else _lock_id(f"u{user.pk}", key)
    committed_error: BaseException | None = None
    IdempotencyRecord: Any = record_model()
    with transaction.atomic():
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_try_advisory_xact_lock(%s)", [lock_id])
            (acquired,) = cursor.fetchone()
        if not acquired:
            raise errors.IdempotencyKeyInUse()

        now = timezone.now()
        record = IdempotencyRecord.objects.filter(**scope, key=key).first()
        if record is not None and record.expires_at <= now:
            record.delete()
            record = None
        if record is not None:
            if record.fingerprint != fingerprint:
                raise errors.IdempotencyKeyReused()
            return Response(
                json.loads(record.response_body),
                status=record.response_status,
                headers={REPLAYED_HEADER: "true"},
            )

        try:
            response = call()
        except commit_on as exc:
            committed_error = exc  # leave the block normally: its effects commit
        else:
            if 200 <= response.status_code < 300:
                IdempotencyRecord.objects.create(
                    **scope,
                    key=key,
                    fingerprint=fingerprint,
                    method=method.upper(),
                    path=path[:500],
                    response_status=response.status_code,
                    response_body=_render(response.data),
                    created_at=now,
                    expires_at=now + dt.timedelta(hours=int(settings.IDEMPOTENCY_TTL_HOURS)),
                )
    if committed_error is not None:
        raise committed_error
    return response


def idempotency_purge() -> int:
    """Delete expired IdempotencyRecords; return how many were deleted.

    Locking: none needed. It deletes in batches so no single statement holds many row locks;
    a request racing on an expired key deletes and replaces that record itself, so whichever
    delete comes first is harmless. Idempotent: a second run deletes nothing new.
    """
    IdempotencyRecord: Any = record_model()
    deleted = 0
    while True:
        now = timezone.now()
        ids = list(
            IdempotencyRecord.objects.filter(expires_at__lte=now).values_list("pk", flat=True)[
                :PURGE_BATCH_SIZE
            ]
        )
        if not ids:
            return deleted
        count, _ = IdempotencyRecord.objects.filter(pk__in=ids, expires_at__lte=now).delete()
        deleted += count


def request_fingerprint(*, method: str, path: str, body: bytes) -> str:
    """SHA-256 hex of method, path and body. A JSON body is canonicalised first (sorted keys,
    no insignificant whitespace, numbers kept as written) so a client's serializer cannot turn
    a retry into a "different" request; any other body is hashed as raw bytes."""
    digest = hashlib.sha256()
    digest.update(method.upper().encode())
    digest.update(b"\x00")
    digest.update(path.encode())
    digest.update(b"\x00")
    digest.update(_canonical_body(body))
    return digest.hexdigest()


# --- internals ------------------------------------------------------------------------------


def _validate_key(key: str) -> None:
    if not 1 <= len(key) <= KEY_MAX_LENGTH or not all("!" <= c <= "~" for c in key):
        raise errors.ValidationFailed(
            "Invalid Idempotency-Key header.",
            details={
                "Idempotency-Key": [
                    f"Must be 1-{KEY_MAX_LENGTH} printable ASCII characters without spaces."
                ]
            },
        )


def _lock_id(scope_id: int | str, key: str) -> int:
    """A signed 64-bit id for pg_try_advisory_xact_lock(bigint). Tenant scopes hash
    "<tenant id>:<key>", user scopes "u<user id>:<key>": the two never share a lock."""
    digest = hashlib.sha256(f"{scope_id}:{key}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


def _canonical_body(body: bytes) -> bytes:
    try:
        # Decimal keeps "1.10" and "1.1000000000000000001" apart; floats would merge them.
        parsed = json.loads(body, parse_float=Decimal)
        return _canonical_json(parsed).encode()
    except (ValueError, RecursionError):  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        return bytes(body)


def _canonical_json(value: Any) -> str:
    if isinstance(value, dict):
        items = sorted(value.items())
        return "{" + ",".join(f"{_canonical_json(k)}:{_canonical_json(v)}" for k, v in items) + "}"
    if isinstance(value, list):
        return "[" + ",".join(_canonical_json(v) for v in value) + "]"
    if isinstance(value, Decimal):
        return str(value)
    return json.dumps(value, ensure_ascii=False)  # str, int, bool, None, NaN/Infinity


def _render(data: Any) -> str:
    """The response body as JSON text, produced by DRF's encoder exactly as the API renders it
    (Decimals, UUIDs and datetimes included). Stored as text, not as a JSON object, because
    PostgreSQL's jsonb reorders object keys: replays must be byte-identical to the original."""
    return json.dumps(data, cls=DrfJSONEncoder, ensure_ascii=False, allow_nan=False)
