"""Trader API keys: format, hashing, issue/revoke, and authentication.

Key: `tk_<8 lowercase alnum prefix>_<43-char urlsafe secret>` (256 bits of entropy), shaped
like the partner keys (partners/keys.py) but with its own `tk_` prefix, so a key pasted into
the wrong API is refused at a glance. The database holds SHA-256 of the whole key. Lookups are
cached per process for at most API_KEY_CACHE_SECONDS (< 5 s) — the same bound on how long a
revoked key keeps working anywhere as for partner keys.
"""

from __future__ import annotations

import hmac

from django.db import IntegrityError, transaction
from django.utils import timezone

from accounts.models import TraderApiKey, User
from core import errors
from core.apikeys import PREFIX_LEN, KeyFormat, TtlCache, hash_key

KEY_PREFIX = "tk_"
LAST_USED_WRITE_INTERVAL_S = 60
_CREATE_ATTEMPTS = 5
_FORMAT = KeyFormat(KEY_PREFIX)

generate_key = _FORMAT.generate
parse_prefix = _FORMAT.parse_prefix
__all__ = ["PREFIX_LEN", "hash_key", "key_cache", "trader_key_authenticate", "trader_key_create"]


def looks_like_trader_key(raw_key: str) -> bool:
    return raw_key.startswith(KEY_PREFIX)


# --- Issue and revoke -----------------------------------------------------------------------
def trader_key_create(*, user: User, name: str = "") -> tuple[TraderApiKey, str]:
    """Mint a key for `user`; returns (row, raw key). The raw key exists only in the return
    value: it is shown once and cannot be recovered. Not idempotent (each call mints a new
    key); a prefix collision (1 in 36^8 per existing key) is retried with a fresh key."""
    for attempt in range(_CREATE_ATTEMPTS):
        prefix, raw = generate_key()
        try:
            with transaction.atomic():
                key = TraderApiKey.objects.create(
                    user=user, name=name[:100], prefix=prefix, secret_hash=hash_key(raw)
                )
        except IntegrityError:
            if attempt == _CREATE_ATTEMPTS - 1:
                raise
            continue
        return key, raw
    raise AssertionError("unreachable")  # pragma: no cover


def trader_key_revoke(*, key: TraderApiKey) -> TraderApiKey:
    """Revoke `key`. Idempotent: revoking a revoked key keeps its first revocation time. This
    process forgets the key at once; other processes within API_KEY_CACHE_SECONDS."""
    now = timezone.now()
    TraderApiKey.objects.filter(pk=key.pk, revoked_at__isnull=True).update(revoked_at=now)
    key.refresh_from_db(fields=["revoked_at"])
    key_cache.forget(key.prefix)
    return key


# --- Authentication -------------------------------------------------------------------------
key_cache: TtlCache[TraderApiKey] = TtlCache()


def _load(prefix: str) -> TraderApiKey | None:
    hit, cached = key_cache.get(prefix)
    if hit:
        return cached
    key = TraderApiKey.objects.select_related("user").filter(prefix=prefix).first()
    key_cache.put(prefix, key)
    return key


def trader_key_authenticate(raw_key: str) -> TraderApiKey:
    """The active key `raw_key` names, with its user loaded; InvalidApiKey otherwise (unknown,
    garbled, revoked, or its user deactivated). Constant-time hash comparison; unknown
    prefixes still hash, so every failure path costs the same. Records last use at most once
    a minute per key."""
    prefix = parse_prefix(raw_key)
    presented_hash = hash_key(raw_key)
    key = _load(prefix) if prefix else None
    stored_hash = key.secret_hash if key is not None else "0" * 64
    if (
        not hmac.compare_digest(presented_hash, stored_hash)
        or key is None
        or not key.is_active
        or not key.user.is_active
    ):
        raise errors.InvalidApiKey()
    _touch(key)
    return key


def _touch(key: TraderApiKey) -> None:
    now = timezone.now()
    last = key.last_used_at
    if last is not None and (now - last).total_seconds() < LAST_USED_WRITE_INTERVAL_S:
        return
    key.last_used_at = now
    TraderApiKey.objects.filter(pk=key.pk).update(last_used_at=now)
