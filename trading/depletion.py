"""Depletion memory: what simulated taker orders took from each level of the real book
(docs/engine-rules.md §3, docs/fill-model.md "Depletion").

One record per version of a level, keyed (token, book side, price, version): `published|taken`
— the level size the feed showed when simulated orders took from it, and how much they took
in total. The version is the one the top carried for that level (`BookTop.bid_versions` /
`ask_versions`); the feed changes it whenever it sets the level — a new size, a removal, a
re-post at the same size — so a walk finds no record for a level the feed set since, and sees
the level whole again, while republishing an unchanged level keeps its version and its
record. A walk sees `available = published − taken` (the stored size is checked too: a top
built without versions keys a level by its price alone, and its size then tells a change).

Taking is optimistic and atomic: `read` returns the records (with their raw values) for the
levels a walk may touch; `commit` writes the new records only if every record it touches is
still exactly what was read (compare-and-set over all of them at once), else nothing and
False — the caller re-reads and walks again. So two orders inside one book update can never
both take the same shares, whichever accounts (and therefore row locks) they belong to.

Stored on Redis (settings.REDIS_URL, shared by every web and worker process): a Lua script,
keys `dep:<token>:<side>:<price>:<version>`, 1 h TTL (the records of versions the feed has
replaced are never read again; the TTL clears them).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import TYPE_CHECKING, Any, Final, TypeVar

from core.money import ZERO

if TYPE_CHECKING:
    from marketdata.bus import BookTop

KEY_PREFIX: Final = "dep:"
TTL_SECONDS: Final = 3600

_CAS_LUA: Final = """
local n = #KEYS
for i = 1, n do
  local cur = redis.call('GET', KEYS[i])
  if cur == false then cur = '' end
  if cur ~= ARGV[2 * i - 1] then return 0 end
end
local ttl = tonumber(ARGV[2 * n + 1])
for i = 1, n do
  redis.call('SET', KEYS[i], ARGV[2 * i], 'EX', ttl)
end
return 1
"""

# `_CAS_LUA` for the first ARGV[1] keys (their ARGV shifted by one), then the values of the
# other keys (nil where unset) after the result: {1 or 0, value, ...}.
_CAS_GET_LUA: Final = """
local n = tonumber(ARGV[1])
local ok = 1
for i = 1, n do
  local cur = redis.call('GET', KEYS[i])
  if cur == false then cur = '' end
  if cur ~= ARGV[2 * i] then
    ok = 0
    break
  end
end
if ok == 1 then
  local ttl = tonumber(ARGV[2 * n + 2])
  for i = 1, n do
    redis.call('SET', KEYS[i], ARGV[2 * i + 1], 'EX', ttl)
  end
end
local out = {ok}
for i = n + 1, #KEYS do
  out[#out + 1] = redis.call('GET', KEYS[i])
end
return out
"""


def norm(value: Decimal | str) -> str:
    """One spelling per value ("0.50" and "0.5" are the same level)."""
    d = Decimal(value)
    text = format(d.normalize(), "f") if d else "0"
    return text


def level_key(
    token_id: str, book_side: str, price: Decimal | str, version: int | None = None
) -> str:
    """The record of one version of a level (None: a top without versions, module docstring)."""
    key = f"{KEY_PREFIX}{token_id}:{book_side}:{norm(price)}"
    return key if version is None else f"{key}:{version}"


def level_keys(top: BookTop, book_side: str, count: int) -> list[str]:
    """The records of the best `count` levels of `top`'s `book_side` ("asks" or "bids"), each
    at the version the top shows it with."""
    rows, versions = (
        (top.asks, top.ask_versions) if book_side == "asks" else (top.bids, top.bid_versions)
    )
    return [
        level_key(top.token_id, book_side, rows[i][0], versions[i] if i < len(versions) else None)
        for i in range(count)
    ]


@dataclass(frozen=True)
class LevelMemory:
    raw: str  # the stored value as read ("" when none): the compare-and-set token
    taken: Decimal  # what is taken from the level at its currently published size


def _parse(raw: str, published: Decimal) -> Decimal:
    if not raw:
        return ZERO
    seen, _, taken = raw.partition("|")
    if Decimal(seen) != published:
        return ZERO  # the feed changed the level since: the memory resets
    return Decimal(taken)


@dataclass(frozen=True)
class Take:
    key: str
    raw: str  # value read
    published: Decimal
    taken_before: Decimal
    size: Decimal

    def new_value(self) -> str:
        return f"{norm(self.published)}|{norm(self.taken_before + self.size)}"


def _cas_args(takes: list[Take]) -> list[str]:
    """The compare-and-set script's ARGV for these takes: each one's value read and new
    value, then the TTL."""
    args: list[str] = []
    for t in takes:
        args += [t.raw, t.new_value()]
    args.append(str(TTL_SECONDS))
    return args


def memories_of(raws: list[str], published: list[Decimal]) -> list[LevelMemory]:
    """The memories of records already read (`read`'s values: "" where none)."""
    return [LevelMemory(raw, _parse(raw, size)) for raw, size in zip(raws, published, strict=True)]


class RedisDepletion:
    def __init__(self, client: Any) -> None:
        self.client = client
        self._cas = client.register_script(_CAS_LUA)
        self._cas_get = client.register_script(_CAS_GET_LUA)

    @classmethod
    def from_url(cls, url: str) -> RedisDepletion:
        import redis

        return cls(redis.Redis.from_url(url, decode_responses=True))

    def read(self, keys: list[str]) -> list[str]:
        if not keys:
            return []
        return [v or "" for v in self.client.mget(keys)]

    def commit(self, takes: list[Take]) -> bool:
        if not takes:
            return True
        return bool(self._cas(keys=[t.key for t in takes], args=_cas_args(takes)))

    def commit_and_get(
        self, takes: list[Take], keys: Sequence[str]
    ) -> tuple[bool, list[str | None]]:
        """`commit`, and the values of other `keys` of this Redis (None where unset), in ONE
        command: for a caller that needs both at one moment (a maker fill: its takes, and its
        positions' marks from the price bus, which lives on the same Redis)."""
        if not keys:
            return self.commit(takes), []
        args = [str(len(takes)), *_cas_args(takes)] if takes else ["0", str(TTL_SECONDS)]
        reply = self._cas_get(keys=[*(t.key for t in takes), *keys], args=args)
        return bool(reply[0]), list(reply[1:])

    def clear(self) -> None:
        keys = list(self.client.scan_iter(match=f"{KEY_PREFIX}*"))
        if keys:
            self.client.delete(*keys)


_redis: dict[str, RedisDepletion] = {}
_redis_lock = threading.Lock()


def get_depletion_store() -> RedisDepletion:
    """The depletion memory on settings.REDIS_URL (one client per URL and process)."""
    from django.conf import settings

    url = str(settings.REDIS_URL)
    with _redis_lock:
        store = _redis.get(url)
        if store is None:
            store = _redis[url] = RedisDepletion.from_url(url)
        return store


def reset_depletion() -> None:
    """Forget this process's Redis clients (tests)."""
    with _redis_lock:
        _redis.clear()


DEPLETION_ATTEMPTS: Final = 16
T = TypeVar("T")


def take_levels(
    keys: Sequence[str],
    crossing: Sequence[tuple[Decimal, Decimal]],
    plan: Callable[[list[Decimal]], tuple[T, Sequence[tuple[Decimal, Decimal]]]],
    *,
    raws: list[str] | None = None,
    get: Sequence[str] = (),
) -> tuple[T, list[Any]]:
    """Take shares from the crossing levels of one side of a token's book (`keys`: their
    records, `level_keys`), atomically: read what depletion took of each level, let `plan`
    decide from those amounts (it returns its result and the (price, size) it takes), and
    commit the takes with a compare-and-set; if another order took from one of the levels
    meanwhile, read and plan again. Taker fills at entry and maker fills both take through
    here.

    `raws`: the records as the caller read them already (the first plan uses them); `get`:
    other keys of this Redis read in the same command as the first commit (their values are
    returned; [] when nothing was taken). Raises SERVICE_UNAVAILABLE when the levels keep
    changing under it."""
    from core import errors

    store = get_depletion_store()
    keys = list(keys)
    published = [s for _, s in crossing]
    index = {p: i for i, (p, _) in enumerate(crossing)}
    got: list[Any] = []
    for attempt in range(DEPLETION_ATTEMPTS):
        mems = memories_of(store.read(keys) if raws is None else raws, published)
        raws = None
        result, planned = plan([m.taken for m in mems])
        if not planned:
            return result, []
        takes = []
        for price, size in planned:
            i = index[price]
            takes.append(Take(keys[i], mems[i].raw, published[i], mems[i].taken, size))
        if get and attempt == 0:
            ok, got = store.commit_and_get(takes, get)
        else:
            ok = store.commit(takes)
        if ok:
            return result, got
    raise errors.ServiceUnavailable("The book is too busy; retry.")
