"""The feed's pipelined publisher writes exactly what RedisBus.publish_json writes."""

from __future__ import annotations

import pytest
import redis

from marketdata.bus import InProcessBus, RedisBus
from marketdata.publisher import PipelinedPublisher, pack_publish, publisher_for


def tops(n: int, tag: str) -> list[tuple[str, bytes]]:
    # Two entries for token 0: the latest wins in MSET, both are streamed.
    items = [(f"tok{i}", b'{"token_id":"tok%d","tag":"%s"}' % (i, tag.encode())) for i in range(n)]
    return [*items, ("tok0", b'{"token_id":"tok0","tag":"again \\n"}')]


def state(client: redis.Redis, n_shards: int) -> dict:
    keys = sorted(k for k in client.keys("md:book:*"))
    streams = {
        shard: [fields for _id, fields in client.xrange(f"md:updates:{shard}")]
        for shard in range(n_shards)
    }
    return {"latest": dict(zip(keys, client.mget(keys), strict=True)), "streams": streams}


@pytest.mark.redis
def test_pipelined_publisher_writes_what_the_bus_writes(redis_url):
    bus = RedisBus.from_url(redis_url, n_shards=3, maxlen=50)
    client = bus.client
    for batch in ("a", "b"):
        bus.publish_json(tops(20, batch))
    expected = state(client, 3)
    assert len(expected["latest"]) == 20 and all(expected["streams"].values())
    client.flushdb()

    publisher = PipelinedPublisher(bus)
    for batch in ("a", "b"):
        publisher.publish_json(tops(20, batch))
    publisher.flush()
    assert state(client, 3) == expected
    assert client.get("md:book:tok0") == b'{"token_id":"tok0","tag":"again \\n"}'


def prints(tokens: list[str], tag: str) -> list[tuple[str, bytes]]:
    return [
        (t, b'{"token_id":"%s","price":"0.5","tag":"%s"}' % (t.encode(), tag.encode()))
        for t in tokens
    ]


@pytest.mark.redis
def test_trade_prints_ride_in_the_stream_entries_exactly_as_the_bus_writes_them(redis_url):
    """Tops with prints, prints on a shard with no tops, and prints alone (no MSET)."""
    bus = RedisBus.from_url(redis_url, n_shards=3, maxlen=50)
    client = bus.client
    batches = [
        (tops(4, "a"), prints(["tok1", "tok7", "tok9"], "a")),
        ([], prints(["tok2"], "b")),
        (tops(2, "c"), []),
    ]
    for items, trades in batches:
        bus.publish_json(items, trades)
    expected = state(client, 3)
    assert any(
        b"trades" in fields for entries in expected["streams"].values() for fields in entries
    )
    client.flushdb()

    publisher = PipelinedPublisher(bus)
    for items, trades in batches:
        publisher.publish_json(items, trades)
    publisher.flush()
    assert state(client, 3) == expected


@pytest.mark.redis
def test_an_error_reply_raises_at_the_next_publish_and_the_publisher_recovers(redis_url):
    bus = RedisBus.from_url(redis_url, n_shards=1)
    bus.client.set("md:updates:0", b"not a stream")  # XADD will answer WRONGTYPE
    publisher = PipelinedPublisher(bus)
    publisher.publish_json(tops(3, "x"))  # written, not waited for
    with pytest.raises(redis.ResponseError, match="WRONGTYPE"):
        publisher.publish_json([])
    assert bus.client.get("md:book:tok1") is not None  # the MSET before it went through
    bus.client.delete("md:updates:0")
    publisher.publish_json(tops(3, "y"))
    publisher.flush()
    assert bus.client.xlen("md:updates:0") == 1


def test_pack_publish_is_the_resp_of_mset_and_one_xadd_per_shard():
    payload, replies = pack_publish([("t", b"{}"), ("t", b"[]")], 1, 7)
    assert replies == 2
    assert payload == (
        b"*3\r\n$4\r\nMSET\r\n$9\r\nmd:book:t\r\n$2\r\n[]\r\n"
        b"*8\r\n$4\r\nXADD\r\n$12\r\nmd:updates:0\r\n$6\r\nMAXLEN\r\n$1\r\n~\r\n$1\r\n7\r\n"
        b"$1\r\n*\r\n$4\r\ntops\r\n$5\r\n{}\n[]\r\n"
    )


def test_pack_publish_with_prints_alone_sends_no_mset():
    payload, replies = pack_publish([], 1, 7, [("t", b"{}")])
    assert replies == 1
    assert payload == (
        b"*10\r\n$4\r\nXADD\r\n$12\r\nmd:updates:0\r\n$6\r\nMAXLEN\r\n$1\r\n~\r\n$1\r\n7\r\n"
        b"$1\r\n*\r\n$4\r\ntops\r\n$0\r\n\r\n$6\r\ntrades\r\n$2\r\n{}\r\n"
    )


def test_other_buses_publish_at_once():
    bus = InProcessBus()
    publisher = publisher_for(bus)
    publisher.publish_json([("t", b'{"token_id":"t"}')])
    assert bus._latest == {"t": b'{"token_id":"t"}'}
    publisher.flush()


def keeper_pair(native: bool) -> tuple:
    """Two keepers fed the same books and changes (one to drain each way)."""
    import orjson

    from marketdata.messages import BookKeeper

    keepers = BookKeeper(native=native), BookKeeper(native=native)
    frames = []
    for i in range(8):
        token = f"tok{i}"
        frames.append(
            orjson.dumps(
                {
                    "event_type": "book",
                    "market": "0xm",
                    "asset_id": token,
                    "timestamp": "1790658674000",
                    "bids": [{"price": "0.4", "size": "10"}, {"price": "0.41", "size": "3"}],
                    "asks": [{"price": "0.6", "size": "5"}],
                }
            )
        )
    frames.append(
        orjson.dumps(
            {
                "event_type": "price_change",
                "market": "0xm",
                "timestamp": "1790658674001",
                "price_changes": [
                    {"asset_id": "tok1", "price": "0.42", "size": "7", "side": "BUY"},
                    {"asset_id": "tok2", "price": "0.6", "size": "0", "side": "SELL"},
                ],
            }
        )
    )
    for keeper in keepers:
        for i in range(8):
            keeper.track(f"tok{i}", market="0xm")
        for frame in frames:
            keeper.feed(frame)
    return keepers


@pytest.mark.redis
@pytest.mark.parametrize("native", [False, True])
def test_publish_keeper_writes_what_publish_json_of_the_drained_tops_writes(
    redis_url, native, monkeypatch
):
    from marketdata import fastbook, messages

    if native and fastbook.native is None:
        pytest.skip("marketdata._fastbook is not built or POLYSIM_FEED_PURE is set")
    monkeypatch.setattr(messages, "now_ms", lambda: 1_790_000_000_000)
    bus = RedisBus.from_url(redis_url, n_shards=3, maxlen=50)
    client = bus.client
    by_json, by_keeper = keeper_pair(native)
    bus.publish_json(by_json.drain_tops_json())
    expected = state(client, 3)
    assert len(expected["latest"]) == 8
    client.flushdb()

    publisher = PipelinedPublisher(bus)
    publisher.publish_keeper(by_keeper)
    publisher.publish_keeper(by_keeper)  # nothing due: only collects the replies
    publisher.flush()
    assert state(client, 3) == expected
    assert by_keeper.drain_tops_packed(3, 50) == (b"", 0, 0)


def test_other_buses_publish_a_keeper_at_once():
    bus = InProcessBus()
    by_json, by_keeper = keeper_pair(False)
    publisher_for(bus).publish_keeper(by_keeper)
    expected = dict(by_json.drain_tops_json())
    assert bus._latest.keys() == expected.keys() == {f"tok{i}" for i in range(8)}
