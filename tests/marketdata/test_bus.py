"""The price bus on a real Redis (the `redis_url` fixture: the test's own, flushed database)."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
import zlib
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest
from django.core.exceptions import ImproperlyConfigured

from marketdata.book import book_from_levels
from marketdata.bus import (
    BookTop,
    LiveTop,
    PriceBus,
    RedisBus,
    TradePrint,
    encode_top,
    get_bus,
    latest_many_live,
    now_ms,
    reset_bus,
    shard_of,
    top_token_id,
)

ROOT = Path(__file__).resolve().parents[2]
TOKENS = [f"{n:077d}" for n in range(1, 41)]  # long decimal ids, like Polymarket's


def make_top(token_id: str, bid: str = "0.48", ask: str = "0.52", **changes) -> BookTop:
    book = book_from_levels(
        market="0x" + "ab" * 32,
        asset_id=token_id,
        bids=[(bid, "100.5"), ("0.001", "220045")],
        asks=[(ask, "0.01"), ("0.999", "1000")],
        tick_size="0.001",
    )
    book.timestamp, book.hash, book.last_trade_price = "1790658827000", "78b396c8", "0.301"
    top = BookTop.from_book(book, last_trade_side="SELL", published_at=1_800_000_000_000)
    return top if not changes else BookTop.from_dict({**orjson.loads(top.to_json()), **changes})


@pytest.fixture
def bus(redis_url) -> Iterator[PriceBus]:
    redis_bus = RedisBus.from_url(redis_url, n_shards=4)
    yield redis_bus
    redis_bus.client.close()


def command_calls(bus: PriceBus) -> dict[str, int]:
    """Server-side command counters (INFO commandstats), to count what a call sent."""
    assert isinstance(bus, RedisBus)
    stats = bus.client.info("commandstats")
    return {name.removeprefix("cmdstat_"): int(v["calls"]) for name, v in stats.items()}


def commands_sent(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    sent = {k: after.get(k, 0) - before.get(k, 0) for k in after}
    return {k: v for k, v in sent.items() if v and k != "info"}


# --- BookTop ----------------------------------------------------------------------------------


def test_book_top_round_trips_exact_decimal_strings():
    top = make_top(TOKENS[0], bid="0.480", ask="0.52")
    assert (top.best_bid, top.best_ask, top.mid, top.spread) == ("0.480", "0.52", "0.5", "0.04")
    assert top.bids == [["0.480", "100.5"], ["0.001", "220045"]]  # best first
    assert top.asks == [["0.52", "0.01"], ["0.999", "1000"]]
    raw = top.to_json()
    assert b'"best_bid":"0.480"' in raw and b"0.48," not in raw  # strings, never floats
    assert BookTop.from_json(raw) == top
    assert top.mid_value() is not None and str(top.mid_value()) == "0.5"
    assert top.levels_value("SELL")[0][1] == top.levels_value("SELL")[0][1].__class__("0.01")


def test_encode_top_is_byte_identical_to_dumping_the_dataclass():
    book = book_from_levels(
        market="0xm", asset_id=TOKENS[0], bids=[("0.1", "5"), ("0.2", "6")], asks=[("0.3", "1")]
    )
    book.timestamp = "1790658827000"
    for depth in (1, 10):
        assert encode_top(book, depth=depth, published_at=7) == orjson.dumps(
            BookTop.from_book(book, depth=depth, published_at=7)
        )
    empty = book_from_levels(market="0xm", asset_id=TOKENS[1], bids=[], asks=[])
    top = BookTop.from_json(encode_top(empty, fresh=False, published_at=1))
    assert (top.mid, top.timestamp_ms, top.fresh, top.bids) == (None, None, False, [])


def test_encode_top_cached_pieces_follow_the_book():
    """Each piece of the top is cached by the values it encodes: a change of any of them shows."""
    book = book_from_levels(
        market='0x"m"\u00e9', asset_id=TOKENS[0], bids=[("0.1", "5")], asks=[("0.3", "1")]
    )
    for ts, ltp, tick, hash_, side, fresh in [
        ("1790658827000", "", None, "", None, True),
        ("1790658827001", "0.2", "0.01", "ab", "BUY", False),
        ("1" * 19, "0.2", "0.001", 'a"b\\', "SELL", True),  # too long for epoch ms: null
        ("17906588270x1", "0.25", "0.001", "ab", None, True),
        ("1790658827000", "", None, "", None, True),
    ]:
        book.timestamp, book.last_trade_price, book.tick_size, book.hash = ts, ltp, tick, hash_
        book.apply_change("BUY", "0.15", str(len(ts)))
        blob = encode_top(book, fresh=fresh, last_trade_side=side, published_at=3)
        assert blob == orjson.dumps(
            BookTop.from_book(book, fresh=fresh, last_trade_side=side, published_at=3)
        )
        top = BookTop.from_json(blob)
        assert (top.last_trade_price, top.tick_size, top.hash, top.fresh) == (
            ltp or None,
            tick,
            hash_,
            fresh,
        )
        assert top.timestamp_ms == (int(ts) if len(ts) <= 18 and ts.isdigit() else None)
        assert (top.best_bid, top.last_trade_side) == ("0.15", side)


# --- latest -----------------------------------------------------------------------------------


def test_publish_then_latest_and_latest_many(bus):
    tops = [make_top(t) for t in TOKENS[:10]]
    bus.publish(tops)
    assert bus.latest(TOKENS[3]) == tops[3]
    assert bus.latest("unknown") is None
    many = bus.latest_many([*TOKENS[:10], "unknown"])
    assert many == {t.token_id: t for t in tops}
    assert bus.latest_many([]) == {}


def test_a_later_publish_replaces_the_latest(bus):
    bus.publish([make_top(TOKENS[0], bid="0.4")])
    bus.publish([make_top(TOKENS[0], bid="0.45"), make_top(TOKENS[0], bid="0.47")])
    latest = bus.latest(TOKENS[0])
    assert latest is not None and latest.best_bid == "0.47"


def test_redis_latest_many_is_one_mget(redis_url):
    bus = RedisBus.from_url(redis_url, n_shards=4)
    bus.publish([make_top(t) for t in TOKENS])
    before = command_calls(bus)
    assert len(bus.latest_many(TOKENS)) == len(TOKENS)
    assert commands_sent(before, command_calls(bus)) == {"mget": 1}


def test_redis_publish_is_one_pipeline_of_one_mset_and_one_xadd_per_shard(redis_url):
    bus = RedisBus.from_url(redis_url, n_shards=4)
    tops = [make_top(t) for t in TOKENS]
    shards = {bus.shard_of(t) for t in TOKENS}
    assert len(shards) > 1
    before = command_calls(bus)
    bus.publish(tops)
    assert commands_sent(before, command_calls(bus)) == {"mset": 1, "xadd": len(shards)}
    assert bus.client.get("md:book:" + TOKENS[0]) == tops[0].to_json()  # one key per token
    assert {k.decode() for k in bus.client.keys("md:updates:*")} == {
        f"md:updates:{s}" for s in shards
    }


# --- stream -----------------------------------------------------------------------------------


def test_updates_go_to_the_tokens_shard_in_publish_order(bus):
    batches = [[make_top(t, bid=f"0.{40 + i}") for t in TOKENS[:12]] for i in range(3)]
    for batch in batches:
        bus.publish(batch)
    seen: dict[str, list[str]] = {}
    for shard in range(bus.n_shards):
        bus.ensure_group(shard, "matcher")
        messages = bus.read(shard, "matcher", "m1", count=100)
        assert len(messages) == len({bus.shard_of(t) for t in TOKENS[:12]} & {shard}) * 3
        for message in messages:
            for top in message.tops:
                assert bus.shard_of(top.token_id) == shard
                seen.setdefault(top.token_id, []).append(top.best_bid or "")
    assert set(seen) == set(TOKENS[:12])
    assert all(bids == ["0.40", "0.41", "0.42"] for bids in seen.values())


def test_raw_reads_leave_tops_encoded_with_their_token_readable(bus):
    """The matcher reads entries raw and decodes only the tops of tokens it has orders on:
    `top_token_id` names the token of either encoding without parsing the JSON, and the raw
    top decodes to exactly what a decoding read returns."""
    shard = bus.shard_of(TOKENS[0])
    same_shard = [t for t in TOKENS if bus.shard_of(t) == shard][:3]
    bus.ensure_group(shard, "raw")
    bus.ensure_group(shard, "decoded")
    tops = [make_top(t, bid="0.41") for t in same_shard[:2]]
    bus.publish(tops)  # BookTop.to_json
    book = book_from_levels(
        market="0xm", asset_id=same_shard[2], bids=[("0.1", "5")], asks=[("0.3", "1")]
    )
    bus.publish_json([(same_shard[2], encode_top(book, published_at=7))])  # the feed's path
    raw = bus.read(shard, "raw", "m", raw=True)
    decoded = bus.read(shard, "decoded", "m")
    assert [m.tops for m in raw] == [[], []]
    assert [top_token_id(b) for m in raw for b in m.raw_tops] == same_shard
    assert [BookTop.from_json(b) for m in raw for b in m.raw_tops] == [
        t for m in decoded for t in m.tops
    ]
    assert top_token_id(b'{"market":"0x1","token_id":"42"}') == "42"  # any other layout


def test_consumer_group_is_at_least_once(bus):
    token = TOKENS[0]
    shard = bus.shard_of(token)
    bus.ensure_group(shard, "matcher")
    bus.ensure_group(shard, "matcher")  # idempotent
    bus.publish([make_top(token, bid="0.41")])
    bus.publish([make_top(token, bid="0.42")])

    first = bus.read(shard, "matcher", "m1", count=1)
    assert [m.tops[0].best_bid for m in first] == ["0.41"]
    assert bus.pending_count(shard, "matcher") == 1
    # m1 dies before acking. After a restart it sees its own pending entry again...
    again = bus.read_pending(shard, "matcher", "m1")
    assert [m.id for m in again] == [first[0].id]
    # ...or another consumer takes it over once it is idle long enough.
    assert bus.claim_stale(shard, "matcher", "m2", min_idle_ms=60_000) == []
    claimed = bus.claim_stale(shard, "matcher", "m2", min_idle_ms=0)
    assert [m.id for m in claimed] == [first[0].id]
    assert claimed[0].tops == first[0].tops
    assert bus.read_pending(shard, "matcher", "m1") == []  # it is m2's now

    assert bus.ack(shard, "matcher", [first[0].id]) == 1
    assert bus.ack(shard, "matcher", [first[0].id]) == 0
    second = bus.read(shard, "matcher", "m2")
    assert [m.tops[0].best_bid for m in second] == ["0.42"]
    bus.ack(shard, "matcher", [m.id for m in second])
    assert bus.pending_count(shard, "matcher") == 0
    assert bus.read(shard, "matcher", "m2") == []


def test_trade_prints_ride_in_their_shards_entry_and_never_touch_the_latest_top(bus):
    token, other = TOKENS[0], next(t for t in TOKENS if bus.shard_of(t) != bus.shard_of(TOKENS[0]))
    shard = bus.shard_of(token)
    for s in range(bus.n_shards):
        bus.ensure_group(s, "matcher", start_id="$")
    top = make_top(token, bid="0.41")
    trade = TradePrint(token, "0.415", "12.5", "SELL", 1790658827001, 1_800_000_000_001)
    only = TradePrint(other, "0.2", "1", None, None, 1_800_000_000_002)
    bus.publish_json([(token, top.to_json())], [(token, trade.to_json())])
    bus.publish_json([], [(other, only.to_json())])  # a print alone is an entry too
    (msg,) = bus.read(shard, "matcher", "m")
    assert msg.tops == [top] and list(msg.trades) == [trade]
    (alone,) = bus.read(bus.shard_of(other), "matcher", "m")
    assert alone.tops == [] and list(alone.trades) == [only]
    assert bus.latest(other) is None  # events, not state
    bus.publish([make_top(token, bid="0.42")])  # entries without prints carry none
    (plain,) = bus.read(shard, "matcher", "m")
    assert plain.trades == () or list(plain.trades) == []


def test_group_created_at_the_end_sees_only_new_updates(bus):
    token = TOKENS[0]
    shard = bus.shard_of(token)
    bus.publish([make_top(token, bid="0.41")])
    bus.ensure_group(shard, "late", start_id="$")
    assert bus.read(shard, "late", "c") == []
    bus.publish([make_top(token, bid="0.42")])
    assert [m.tops[0].best_bid for m in bus.read(shard, "late", "c")] == ["0.42"]


def test_read_blocks_until_an_update_arrives(bus):
    token = TOKENS[0]
    shard = bus.shard_of(token)
    bus.ensure_group(shard, "matcher", start_id="$")
    assert bus.read(shard, "matcher", "m1", block_ms=50) == []
    timer = threading.Timer(0.1, lambda: bus.publish([make_top(token)]))
    timer.start()
    started = time.monotonic()
    messages = bus.read(shard, "matcher", "m1", block_ms=5_000)
    timer.join()
    assert [m.tops[0].token_id for m in messages] == [token]
    assert time.monotonic() - started < 4


def test_mark_stale_republishes_with_fresh_false(bus):
    token = TOKENS[0]
    shard = bus.shard_of(token)
    bus.ensure_group(shard, "matcher", start_id="$")
    bus.publish([make_top(token)])
    stale = bus.mark_stale([token, "never-published"])
    assert [t.token_id for t in stale] == [token]
    latest = bus.latest(token)
    assert latest is not None and latest.fresh is False and latest.best_bid == "0.48"
    updates = [top for m in bus.read(shard, "matcher", "m1") for top in m.tops]
    assert [t.fresh for t in updates] == [True, False]


def test_stream_is_trimmed(bus):
    bus.maxlen = 5
    token = TOKENS[0]
    for i in range(200):
        bus.publish([make_top(token, bid=f"0.{100 + i}")])
    # Redis trims approximately (whole macro nodes): bounded, not exact.
    assert 5 <= bus.stream_length(bus.shard_of(token)) < 200


# --- heartbeat and liveness ------------------------------------------------------------------


def test_a_fresh_top_is_live_only_while_its_shard_heartbeat_is_young(bus):
    token = TOKENS[0]
    shard = bus.shard_of(token)
    other = next(t for t in TOKENS if bus.shard_of(t) != shard)
    bus.publish([make_top(token), make_top(other)])
    top = bus.latest(token)
    assert top is not None and top.fresh
    # No heartbeat yet: fresh, but nobody vouches for it.
    assert bus.heartbeat_age_ms(shard) is None
    assert bus.latest_live(token) == LiveTop(top, False)

    bus.heartbeat(shard)
    age = bus.heartbeat_age_ms(shard)
    assert age is not None and 0 <= age < 1_000
    assert bus.latest_live(token) == LiveTop(top, True)
    # Only the token's own shard counts.
    assert bus.latest_live(other).live is False

    # A feed that stopped beating 10 s ago: its fresh tops are not live.
    bus.heartbeat(shard, at_ms=now_ms() - 10_000)
    age = bus.heartbeat_age_ms(shard)
    assert age is not None and 9_000 < age < 12_000
    assert bus.latest_live(token) == LiveTop(top, False)

    # A young heartbeat does not make a stale top live.
    bus.heartbeat(shard)
    bus.mark_stale([token])
    stale = bus.latest_live(token)
    assert stale.top is not None and not stale.top.fresh and not stale.live
    assert bus.latest_live("unknown") == LiveTop(None, False)


def test_a_conditional_heartbeat_writes_only_over_the_beat_it_expects(bus):
    """The feed's way to learn that Redis lost or replaced its writes (restarted empty, or
    from an older dump): its beat is written only over the one it wrote last."""
    shard = 1
    first = bus.heartbeat(shard, at_ms=now_ms() - 100)
    assert first is not None
    second = bus.heartbeat(shard, expect=first)
    assert second is not None and second >= first
    assert bus.heartbeat(shard, expect=first) is None  # not the latest beat any more
    assert bus.heartbeat_age_ms(shard) is not None and bus.heartbeat_age_ms(shard) < 1_000
    bus.client.flushdb()  # Redis came back empty
    assert bus.heartbeat(shard, expect=second) is None
    assert bus.heartbeat_age_ms(shard) is None  # nothing written: the feed republishes first


def test_heartbeat_goes_stale_after_the_threshold(bus):
    token = TOKENS[0]
    shard = bus.shard_of(token)
    bus.publish([make_top(token)])
    bus.heartbeat_stale_ms = 300
    bus.heartbeat(shard)
    assert bus.latest_live(token).live
    time.sleep(0.4)
    assert not bus.latest_live(token).live
    bus.heartbeat(shard)
    assert bus.latest_live(token).live


def test_redis_latest_live_is_one_round_trip_on_the_server_clock(redis_url, monkeypatch):
    import redis

    bus = RedisBus.from_url(redis_url, n_shards=4)
    token = TOKENS[0]
    shard = bus.shard_of(token)
    top = make_top(token)
    bus.publish([top])
    bus.heartbeat(shard)  # loads the script
    seconds, micros = bus.client.time()
    stamped = int(bus.client.get(f"md:heartbeat:{shard}"))
    assert abs(seconds * 1000 + micros // 1000 - stamped) < 1_000  # the server's clock, in ms

    before = command_calls(bus)
    bus.heartbeat(shard)  # one script call (the server counts what runs inside it too)
    assert commands_sent(before, command_calls(bus)) == {"evalsha": 1, "time": 1, "set": 1}

    round_trips: list[int] = []
    real_execute = redis.client.Pipeline.execute

    def counting_execute(self, *args, **kwargs):
        round_trips.append(len(self.command_stack))
        return real_execute(self, *args, **kwargs)

    monkeypatch.setattr(redis.client.Pipeline, "execute", counting_execute)
    before = command_calls(bus)
    reading = bus.latest_live(token)
    assert reading.live and reading.top == top
    assert commands_sent(before, command_calls(bus)) == {"mget": 1, "time": 1}
    assert round_trips == [2]  # ONE pipeline: MGET book + heartbeat, TIME


def test_get_bus_reads_the_heartbeat_threshold_from_settings(settings, redis_url):
    reset_bus()
    settings.REDIS_URL = redis_url
    settings.PRICE_BUS_HEARTBEAT_STALE_SECONDS = 0.25
    bus = get_bus()
    assert bus.heartbeat_stale_ms == 250
    settings.PRICE_BUS_HEARTBEAT_STALE_SECONDS = 5
    assert get_bus() is bus and bus.heartbeat_stale_ms == 5_000
    reset_bus()


# --- sharding and the process-wide bus -------------------------------------------------------


def test_shard_of_is_stable_across_processes():
    ids = TOKENS[:20]
    mine = [shard_of(t, 8) for t in ids]
    code = (
        "import sys, json; from marketdata.bus import shard_of; "
        f"print(json.dumps([shard_of(t, 8) for t in {ids!r}]))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
        env={"PYTHONHASHSEED": "12345", "PATH": "/usr/bin:/bin"},
    ).stdout
    assert orjson.loads(out) == mine
    assert mine == [zlib.crc32(t.encode()) % 8 for t in ids]
    assert len(set(mine)) > 1
    assert shard_of(TOKENS[0], 1) == 0


def test_get_bus_refuses_to_run_without_redis(settings):
    reset_bus()
    settings.REDIS_URL = ""
    with pytest.raises(ImproperlyConfigured, match="REDIS_URL"):
        get_bus()


def test_get_bus_is_redis_with_a_url(settings, redis_url):
    reset_bus()
    settings.REDIS_URL = redis_url
    bus = get_bus()
    assert isinstance(bus, RedisBus)
    assert get_bus() is bus
    top = make_top(TOKENS[0])
    bus.publish([top])
    assert bus.latest(TOKENS[0]) == top
    reset_bus()


def test_latest_many_live_narrows_fresh_to_live_per_shard(bus):
    """One pipeline gives what `latest_many` and the shards' heartbeats say: fresh only
    where the shard's feed beats, stale tops stay stale, unknown tokens are absent."""
    beating = TOKENS[0]
    shard = bus.shard_of(beating)
    dead = next(t for t in TOKENS if bus.shard_of(t) != shard)
    stale = next(t for t in TOKENS if t not in (beating, dead) and bus.shard_of(t) == shard)
    bus.publish([make_top(beating), make_top(dead), make_top(stale)])
    bus.mark_stale([stale])
    bus.heartbeat(shard)
    bus.heartbeat(bus.shard_of(dead), at_ms=now_ms() - 10_000)
    tops = latest_many_live(bus, [beating, dead, stale, "unknown", beating])
    assert set(tops) == {beating, dead, stale}
    assert tops[beating].fresh and tops[beating] == bus.latest(beating)
    assert not tops[dead].fresh
    assert tops[dead].published_at == bus.latest(dead).published_at
    assert tops[dead].with_fresh(True, published_at=tops[dead].published_at) == bus.latest(dead)
    assert not tops[stale].fresh
    assert latest_many_live(bus, []) == {}


def test_redis_latest_many_live_and_get_reads_other_keys_in_the_same_round_trip(redis_url):
    import redis

    bus = RedisBus.from_url(redis_url, n_shards=4)
    token = TOKENS[0]
    bus.publish([make_top(token)])
    bus.heartbeat(bus.shard_of(token))
    client = redis.Redis.from_url(redis_url)
    client.set("dep:test:asks:0.5", "100|4")
    tops, raws = bus.latest_many_live_and_get([token, "unknown"], ["dep:test:asks:0.5", "nope"])
    assert tops == latest_many_live(bus, [token]) and tops[token].fresh
    assert raws == [b"100|4", None]
    assert bus.latest_many_live_and_get([], ["dep:test:asks:0.5"]) == ({}, [b"100|4"])
    assert bus.latest_many_live_and_get([token], [])[1] == []
    assert bus.latest_many_live_and_get([], []) == ({}, [])
