"""Partner API keys (`pk_`): authentication. Format, hashing and the per-process cache live
in core.api.keys, shared with trader keys.

Key: `pk_<8 lowercase alnum prefix>_<43-char urlsafe secret>` (256 bits of entropy). The prefix
is public and indexed; the database holds SHA-256 of the whole key. Lookups are cached per
process for at most API_KEY_CACHE_SECONDS (< 5 s), which bounds how long a revoked key keeps
working anywhere (docs/partner-api.md) while sparing the database one query per request.
"""

from __future__ import annotations

from dataclasses import dataclass

from core import errors
from core.api.keys import PREFIX_LEN, KeyRing, hash_key
from partners.models import ApiKey, Tenant

KEY_PREFIX = "pk_"
_RING: KeyRing[ApiKey] = KeyRing(
    KEY_PREFIX, lambda prefix: ApiKey.objects.select_related("tenant").filter(prefix=prefix).first()
)
key_cache = _RING.cache

generate_key = _RING.format.generate
parse_prefix = _RING.format.parse_prefix
__all__ = ["PREFIX_LEN", "Caller", "authenticate", "generate_key", "hash_key", "key_cache"]


@dataclass(frozen=True)
class Caller:
    """Who is calling: the key and its tenant, as loaded (or cached) for this request."""

    api_key: ApiKey
    tenant: Tenant

    @property
    def scopes(self) -> frozenset[str]:
        return frozenset(self.api_key.scopes)


def authenticate(raw_key: str | None) -> Caller:
    """Check order (docs/partner-api.md): key present → key valid → tenant enabled.

    Raises MissingApiKey, InvalidApiKey, or NotFound for a disabled tenant (the whole surface
    is 404 for it). The key check is core.api.keys.KeyRing.verify's (constant time).
    """
    if not raw_key:
        raise errors.MissingApiKey()
    key = _RING.verify(raw_key)
    if key is None:
        raise errors.InvalidApiKey()
    if not key.tenant.enabled:
        raise errors.NotFound()
    _RING.touch(key)
    return Caller(api_key=key, tenant=key.tenant)
