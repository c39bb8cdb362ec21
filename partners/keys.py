"""Partner API keys (`pk_`): authentication. Format, hashing and the per-process cache live
in core.apikeys, shared with trader keys.

Key: `pk_<8 lowercase alnum prefix>_<43-char urlsafe secret>` (256 bits of entropy). The prefix
is public and indexed; the database holds SHA-256 of the whole key. Lookups are cached per
process for at most API_KEY_CACHE_SECONDS (< 5 s), which bounds how long a revoked key keeps
working anywhere (partner-api.md §2) while sparing the database one query per request.
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass

from django.utils import timezone

from core import errors
from core.apikeys import PREFIX_LEN, KeyFormat, TtlCache, hash_key
from partners.models import ApiKey, Tenant

KEY_PREFIX = "pk_"
LAST_USED_WRITE_INTERVAL_S = 60
_FORMAT = KeyFormat(KEY_PREFIX)

generate_key = _FORMAT.generate
parse_prefix = _FORMAT.parse_prefix
__all__ = ["PREFIX_LEN", "Caller", "authenticate", "generate_key", "hash_key", "key_cache"]


@dataclass(frozen=True)
class Caller:
    """Who is calling: the key and its tenant, as loaded (or cached) for this request."""

    api_key: ApiKey
    tenant: Tenant

    @property
    def scopes(self) -> frozenset[str]:
        return frozenset(self.api_key.scopes)


key_cache: TtlCache[ApiKey] = TtlCache()


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
