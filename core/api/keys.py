"""API key plumbing shared by partner keys (`pk_`) and trader keys (`tk_`).

Key: `<kind>_<8 lowercase alnum prefix>_<43-char urlsafe secret>` (256 bits of entropy). The
prefix is public and indexed; only SHA-256 of the whole key is stored (a fast hash is right
for random 256-bit secrets; a password hash would add ~100 ms to every call). Lookups are
cached per process for at most API_KEY_CACHE_SECONDS (< 5 s), which bounds how long a revoked
key keeps working anywhere.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import string
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from django.conf import settings
from django.utils import timezone

PREFIX_LEN = 8
PREFIX_ALPHABET = string.ascii_lowercase + string.digits
# A key's last use is written at most this often: a write per request would make every read a
# write.
LAST_USED_WRITE_INTERVAL_S = 60

T = TypeVar("T")


@dataclass(frozen=True)
class KeyFormat:
    kind: str  # "pk_" or "tk_"

    def generate(self) -> tuple[str, str]:
        """Return (prefix, full_key)."""
        prefix = "".join(secrets.choice(PREFIX_ALPHABET) for _ in range(PREFIX_LEN))
        return prefix, f"{self.kind}{prefix}_{secrets.token_urlsafe(32)}"

    def parse_prefix(self, raw_key: str) -> str | None:
        """The public prefix, or None when the text is not shaped like this kind of key."""
        start = len(self.kind)
        if not raw_key.startswith(self.kind) or len(raw_key) < start + PREFIX_LEN + 2:
            return None
        prefix = raw_key[start : start + PREFIX_LEN]
        if raw_key[start + PREFIX_LEN] != "_" or any(c not in PREFIX_ALPHABET for c in prefix):
            return None
        return prefix


def hash_key(raw_key: str) -> str:
    return hashlib.sha256(raw_key.encode()).hexdigest()


class TtlCache(Generic[T]):
    """prefix → (loaded_at, value or None) for API_KEY_CACHE_SECONDS; per process. A cached
    None (unknown prefix) is remembered too, so junk keys cost no query either."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._entries: dict[str, tuple[float, T | None]] = {}

    def get(self, key: str) -> tuple[bool, T | None]:
        ttl = float(settings.API_KEY_CACHE_SECONDS)
        if ttl <= 0:
            return False, None
        with self._lock:
            entry = self._entries.get(key)
        if entry is None or time.monotonic() - entry[0] > ttl:
            return False, None
        return True, entry[1]

    def put(self, key: str, value: T | None) -> None:
        with self._lock:
            if len(self._entries) > 10_000:
                self._entries.clear()
            self._entries[key] = (time.monotonic(), value)

    def forget(self, key: str) -> None:
        with self._lock:
            self._entries.pop(key, None)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()


# A key model (partners.ApiKey, accounts.TraderApiKey): `secret_hash`, `is_active`,
# `last_used_at`.
K = TypeVar("K")


class KeyRing(Generic[K]):
    """One kind of key: its format, its per-process cache, and the one check of a presented
    key. `load(prefix)` reads the key row (with what the caller needs joined) or None."""

    def __init__(self, kind: str, load: Callable[[str], K | None]) -> None:
        self.format = KeyFormat(kind)
        self.cache: TtlCache[K] = TtlCache()
        self._load = load

    def _cached(self, prefix: str) -> K | None:
        hit, cached = self.cache.get(prefix)
        if hit:
            return cached
        key = self._load(prefix)
        self.cache.put(prefix, key)
        return key

    def verify(self, raw_key: str) -> K | None:
        """The active key `raw_key` names, or None (garbled, unknown, wrong secret, revoked).
        Constant-time hash comparison; unknown prefixes still hash, so every failure path
        costs the same. The caller applies its own further checks, then `touch`es the key."""
        prefix = self.format.parse_prefix(raw_key)
        presented_hash = hash_key(raw_key)
        key: Any = self._cached(prefix) if prefix else None
        stored_hash = key.secret_hash if key is not None else "0" * 64
        if not hmac.compare_digest(presented_hash, stored_hash) or key is None:
            return None
        return key if key.is_active else None  # type: ignore[no-any-return]

    @staticmethod
    def touch(key: Any) -> None:
        """Record the key's use, at most once per LAST_USED_WRITE_INTERVAL_S."""
        now = timezone.now()
        last = key.last_used_at
        if last is not None and (now - last).total_seconds() < LAST_USED_WRITE_INTERVAL_S:
            return
        key.last_used_at = now
        type(key)._default_manager.filter(pk=key.pk).update(last_used_at=now)
