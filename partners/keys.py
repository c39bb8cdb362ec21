"""API key format, hashing and authentication.

Key: `pk_<8 lowercase alnum prefix>_<43-char urlsafe secret>` (256 bits of entropy). The prefix
is public and indexed; the database holds SHA-256 of the whole key. Lookups are cached per
process for at most API_KEY_CACHE_SECONDS (< 5 s), which bounds how long a revoked key keeps
working anywhere (partner-api.md §2) while sparing the database one query per request.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import string
import threading
import time
from dataclasses import dataclass

from django.conf import settings
from django.utils import timezone

from core import errors
from partners.models import ApiKey, Tenant

KEY_PREFIX = "pk_"
PREFIX_LEN = 8
_PREFIX_ALPHABET = string.ascii_lowercase + string.digits
LAST_USED_WRITE_INTERVAL_S = 60


def generate_key() -> tuple[str, str]:
    """Return (prefix, full_key)."""
    prefix = "".join(secrets.choice(_PREFIX_ALPHABET) for _ in range(PREFIX_LEN))
    return prefix, f"{KEY_PREFIX}{prefix}_{secrets.token_urlsafe(32)}"


def hash_key(raw_key: str) -> str:
    return hashlib.sha256(raw_key.encode()).hexdigest()


def parse_prefix(raw_key: str) -> str | None:
    if not raw_key.startswith(KEY_PREFIX) or len(raw_key) < len(KEY_PREFIX) + PREFIX_LEN + 2:
        return None
    prefix = raw_key[len(KEY_PREFIX) : len(KEY_PREFIX) + PREFIX_LEN]
    if raw_key[len(KEY_PREFIX) + PREFIX_LEN] != "_":
        return None
    if any(c not in _PREFIX_ALPHABET for c in prefix):
        return None
    return prefix


@dataclass(frozen=True)
class Caller:
    """Who is calling: the key and its tenant, as loaded (or cached) for this request."""

    api_key: ApiKey
    tenant: Tenant

    @property
    def scopes(self) -> frozenset[str]:
        return frozenset(self.api_key.scopes)


class _KeyCache:
    """prefix → (loaded_at, ApiKey-with-tenant or None). Tiny TTL; per process."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._entries: dict[str, tuple[float, ApiKey | None]] = {}

    def get(self, prefix: str) -> tuple[bool, ApiKey | None]:
        ttl = float(settings.API_KEY_CACHE_SECONDS)
        if ttl <= 0:
            return False, None
        with self._lock:
            entry = self._entries.get(prefix)
        if entry is None or time.monotonic() - entry[0] > ttl:
            return False, None
        return True, entry[1]

    def put(self, prefix: str, key: ApiKey | None) -> None:
        with self._lock:
            if len(self._entries) > 10_000:
                self._entries.clear()
            self._entries[prefix] = (time.monotonic(), key)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()


key_cache = _KeyCache()


def _load(prefix: str) -> ApiKey | None:
    hit, cached = key_cache.get(prefix)
    if hit:
        return cached
    key = ApiKey.objects.select_related("tenant").filter(prefix=prefix).first()
    key_cache.put(prefix, key)
    return key


def authenticate(raw_key: str | None) -> Caller:
    """Check order (partner-api.md §2): key present → key valid → tenant enabled.

    Raises MissingApiKey, InvalidApiKey, or NotFound for a disabled tenant (the whole surface
    is 404 for it). Constant-time comparison of the hash; unknown prefixes still hash, so the
    two failure paths cost the same.
    """
    if not raw_key:
        raise errors.MissingApiKey()
    prefix = parse_prefix(raw_key)
    presented_hash = hash_key(raw_key)
    key = _load(prefix) if prefix else None
    stored_hash = key.secret_hash if key is not None else "0" * 64
    if not hmac.compare_digest(presented_hash, stored_hash) or key is None or not key.is_active:
        raise errors.InvalidApiKey()
    if not key.tenant.enabled:
        raise errors.NotFound()
    _touch(key)
    return Caller(api_key=key, tenant=key.tenant)


def _touch(key: ApiKey) -> None:
    """Record last use at most once a minute per key (a write per request would make every
    read a write)."""
    now = timezone.now()
    last = key.last_used_at
    if last is not None and (now - last).total_seconds() < LAST_USED_WRITE_INTERVAL_S:
        return
    key.last_used_at = now
    ApiKey.objects.filter(pk=key.pk).update(last_used_at=now)
