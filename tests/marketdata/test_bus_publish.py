"""What one feed flush writes to Redis (`RedisBus.publish_json`, one redis-py pipeline): each
token's latest top under its key, every top and trade print in its shard's stream entry, in
publish order, byte for byte as the keeper encoded them."""

from __future__ import annotations

import orjson
import pytest
import redis

from marketdata.bus import RedisBus, shard_of
from marketdata.messages import BookKeeper


def tops(n: int, tag: str) -> list[tuple[str, bytes]]:
    # Two entries for token 0: the latest wins in MSET, both are streamed.
    items = [(f"tok{i}", b'{"token_id":"tok%d","tag":"%s"}' % (i, tag.encode())) for i in range(n)]
    return [*items, ("tok0", b'{"token_id":"tok0","tag":"again \\n"}')]


def prints(tokens: list[str], tag: str) -> list[tuple[str, bytes]]:
    return [
        (t, b'{"token_id":"%s","price":"0.5","tag":"%s"}' % (t.encode(), tag.encode()))
        for t in tokens
    ]


def entries(client: redis.Redis, shard: int) -> list[dict[bytes, bytes]]:
    return [fields for _id, fields in client.xrange(f"md:updates:{shard}")]


def test_latest_top_per_token_and_every_top_in_its_shards_stream(redis_url):
    bus = RedisBus.from_url(redis_url, n_shards=3, maxlen=50)
    bus.publish_json(tops(20, "a"))
    client = bus.client
    assert client.get("md:book:tok0") == b'{"token_id":"tok0","tag":"again \\n"}'
    assert client.get("md:book:tok7") == b'{"token_id":"tok7","tag":"a"}'
    streamed = {shard: entries(client, shard) for shard in range(3)}
    assert all(len(e) == 1 for e in streamed.values())  # one entry per shard per flush
    shard0 = shard_of("tok0", 3)
    lines = streamed[shard0][0][b"tops"].split(b"\n")
    # JSON never holds a raw newline (orjson escapes it), so one top per line
    assert lines[0] == b'{"token_id":"tok0","tag":"a"}'
    assert lines[-1] == b'{"token_id":"tok0","tag":"again \\n"}'
    assert sum(len(e[0][b"tops"].split(b"\n")) for e in streamed.values()) == 21


def test_trade_prints_ride_in_their_shards_entry_and_alone_send_no_mset(redis_url):
    bus = RedisBus.from_url(redis_url, n_shards=3, maxlen=50)
    client = bus.client
    bus.publish_json(tops(4, "a"), prints(["tok1", "tok7", "tok9"], "a"))
    with_prints = [e for s in range(3) for e in entries(client, s) if b"trades" in e]
    assert sorted(line for e in with_prints for line in e[b"trades"].split(b"\n")) == sorted(
        blob for _, blob in prints(["tok1", "tok7", "tok9"], "a")
    )
    before = client.info("commandstats").get("cmdstat_mset", {}).get("calls", 0)
    bus.publish_json([], prints(["tok2"], "b"))
    assert client.info("commandstats").get("cmdstat_mset", {}).get("calls", 0) == before
    last = entries(client, shard_of("tok2", 3))[-1]
    assert last == {b"tops": b"", b"trades": prints(["tok2"], "b")[0][1]}
    assert client.get("md:book:tok9") is None  # prints are events, never a latest top


def test_a_flush_is_one_round_trip(redis_url, monkeypatch):
    bus = RedisBus.from_url(redis_url, n_shards=4, maxlen=50)
    executed: list[int] = []
    real = redis.client.Pipeline.execute

    def counting(self, *args, **kwargs):
        executed.append(len(self.command_stack))
        return real(self, *args, **kwargs)

    monkeypatch.setattr(redis.client.Pipeline, "execute", counting)
    bus.publish_json(tops(40, "x"), prints(["tok3"], "x"))
    shards = len({shard_of(f"tok{i}", 4) for i in range(40)})
    assert executed == [1 + shards]  # MSET + one XADD per shard touched, one pipeline
    bus.publish_json([])
    assert executed == [1 + shards]  # nothing to send: no round trip


def test_an_error_reply_raises_and_the_next_publish_goes_through(redis_url):
    """The feed catches this (marketdata/ingest.py) and republishes every book later."""
    bus = RedisBus.from_url(redis_url, n_shards=1)
    bus.client.set("md:updates:0", b"not a stream")  # XADD will answer WRONGTYPE
    with pytest.raises(redis.ResponseError, match="WRONGTYPE"):
        bus.publish_json(tops(3, "x"))
    assert bus.client.get("md:book:tok1") is not None  # the MSET before it went through
    bus.client.delete("md:updates:0")
    bus.publish_json(tops(3, "y"))
    assert bus.client.xlen("md:updates:0") == 1


def test_the_keepers_drained_tops_are_stored_as_encoded(redis_url, monkeypatch):
    from marketdata import messages

    monkeypatch.setattr(messages, "now_ms", lambda: 1_790_000_000_000)
    keeper = BookKeeper()
    for i in range(8):
        keeper.track(f"tok{i}", market="0xm")
        keeper.feed(
            orjson.dumps(
                {"event_type": "book", "market": "0xm", "asset_id": f"tok{i}",
                 "timestamp": "1790658674000",
                 "bids": [{"price": "0.4", "size": "10"}, {"price": "0.410", "size": "3"}],
                 "asks": [{"price": ".6", "size": "5.50"}]}
            )
        )  # fmt: skip
    drained = keeper.drain_tops_json()
    bus = RedisBus.from_url(redis_url, n_shards=3, maxlen=50)
    bus.publish_json(drained)
    assert keeper.drain_tops_json() == []  # drained once
    top = bus.latest("tok3")
    assert top is not None and top.fresh
    # the exchange's exact level strings, best first, and the exact mid/spread
    assert top.bids == [["0.410", "3"], ["0.4", "10"]] and top.asks == [[".6", "5.50"]]
    assert (top.best_bid, top.best_ask, top.mid, top.spread) == ("0.410", ".6", "0.505", "0.19")
    assert bus.client.get("md:book:tok3") == dict(drained)["tok3"]
