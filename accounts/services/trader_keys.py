"""Trader API keys: format, hashing, issue/revoke, and authentication.

Key: `tk_<8 lowercase alnum prefix>_<43-char urlsafe secret>` (256 bits of entropy), shaped
like the partner keys (core.api.keys) but with its own `tk_` prefix, so a key pasted into the
wrong API is refused at a glance. The database holds SHA-256 of the whole key. Lookups are
cached per process for at most API_KEY_CACHE_SECONDS (< 5 s) — the same bound on how long a
revoked key keeps working anywhere as for partner keys.
"""

from __future__ import annotations

from django.db import IntegrityError, transaction
from django.utils import timezone

from accounts.models import TraderApiKey, User
from core import errors
from core.api.keys import PREFIX_LEN, KeyRing, hash_key

KEY_PREFIX = "tk_"
_CREATE_ATTEMPTS = 5
_RING: KeyRing[TraderApiKey] = KeyRing(
    KEY_PREFIX,
    lambda prefix: TraderApiKey.objects.select_related("user").filter(prefix=prefix).first(),
)
key_cache = _RING.cache

generate_key = _RING.format.generate
parse_prefix = _RING.format.parse_prefix
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
def trader_key_authenticate(raw_key: str) -> TraderApiKey:
    """The active key `raw_key` names, with its user loaded; InvalidApiKey otherwise (unknown,
    garbled, revoked, or its user deactivated). The check is core.api.keys.KeyRing.verify's
    (constant time); last use is recorded at most once a minute per key."""
    key = _RING.verify(raw_key)
    if key is None or not key.user.is_active:
        raise errors.InvalidApiKey()
    _RING.touch(key)
    return key
