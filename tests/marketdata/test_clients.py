"""The real Gamma and CLOB clients against a running fake Polymarket (real HTTP on loopback)
loaded from the shared recorded fixtures."""

from __future__ import annotations

import json
from decimal import Decimal

import pytest

from marketdata.clients import ClobClient, GammaClient, PolymarketError

EMPTY_ASK_TOKEN = "72610532355343625199299853218161700546393390326785971247545541945337255643692"
DK_TOKEN = "98022490269692409998126496127597032490334070080325855126491859374983463996227"
BTC_UP = "104239898038807136052399800151408521467737075933964991162589336683346093173875"
KATANA_CID = "0x8ccc3f4951ff02c1d34b87988752b4444ad17228732780a6cf22afefe8478bb6"
BTC_CID = "0x78443f961b9a65869dcb39359de9960165c7e5cbad0904eac7f29cd77872a63b"
SPORTS_CID = "0x202abb9a80673068ec5ce9294d60e31eeaf3ab5c82fb21fb0c9142e5d0cab385"


@pytest.fixture
def gamma(fake):
    with GammaClient(fake.gamma_url, backoff=0.001, retries=2) as client:
        yield client


@pytest.fixture
def clob(fake):
    with ClobClient(fake.clob_url, backoff=0.001, retries=3) as client:
        yield client


def paths(fake, prefix):
    return [target for _, target in fake.requests if target.startswith(prefix)]


# --- Gamma lists ----------------------------------------------------------------------------------
def test_keyset_pagination_walks_every_page(fake, gamma):
    open_ids = {cid for cid, m in fake.gamma.items() if not m.get("closed")}

    markets = list(gamma.iter_markets(closed=False, page_size=2))

    assert {m["conditionId"] for m in markets} == open_ids
    assert len(markets) == len(open_ids) == 7
    keyset = paths(fake, "/gamma/markets/keyset")
    assert len(keyset) == 4  # 2+2+2+1
    assert all("limit=2" in p and "closed=false" in p for p in keyset)
    assert sum("after_cursor=" in p for p in keyset) == 3


def test_closed_none_means_open_and_closed(fake, gamma):
    markets = list(gamma.iter_markets(closed=None, page_size=100))

    assert {m["conditionId"] for m in markets} == set(fake.gamma)
    assert [m["closed"] for m in markets] == sorted(m["closed"] for m in markets)  # open first


def test_limit_caps_the_total(gamma):
    assert len(list(gamma.iter_markets(closed=None, limit=3, page_size=2))) == 3


def test_falls_back_to_legacy_list_when_keyset_is_404(fake, gamma):
    fake.set_keyset_enabled(False)

    first = list(gamma.iter_markets(closed=False, page_size=2))
    second = list(gamma.iter_markets(closed=True, page_size=4))

    assert len(first) == 7
    assert {m["conditionId"] for m in second} == {
        cid for cid, m in fake.gamma.items() if m.get("closed")
    }
    assert len(paths(fake, "/gamma/markets/keyset")) == 1  # learnt once per client
    legacy = paths(fake, "/gamma/markets?")
    assert any("offset=6" in p for p in legacy)
    assert all("closed=" in p for p in legacy)  # never relies on the implicit closed=false


def test_events_keyset_and_nested_markets_are_decoded(fake, gamma):
    events = list(gamma.iter_events(closed=None, page_size=2))

    assert {e["id"] for e in events} == set(fake.events)
    negrisk = next(e for e in events if e["id"] == "30829")
    assert negrisk["negRisk"] is True
    assert [len(m["clobTokenIds"]) for m in negrisk["markets"]] == [2, 2]
    assert all(isinstance(m["outcomePrices"], list) for m in negrisk["markets"])


def test_events_fall_back_to_legacy(fake, gamma):
    fake.set_keyset_enabled(False)

    events = list(gamma.iter_events(closed=False))

    assert events and all(not e.get("closed") for e in events)
    assert paths(fake, "/gamma/events?")


def test_json_in_string_fields_are_decoded(fixtures_dir, gamma):
    raw = json.loads(
        (fixtures_dir / "gamma/nt_gamma_market_resolved_no_uma_resolved.json").read_text()
    )

    market = gamma.get_market(raw["id"])

    assert isinstance(raw["outcomes"], str)
    assert market["outcomes"] == ["Yes", "No"]
    assert market["outcomePrices"] == ["0", "1"]
    assert market["clobTokenIds"] == json.loads(raw["clobTokenIds"])
    assert market["umaResolutionStatuses"] == ["proposed"]
    assert market["umaResolutionStatus"] == "resolved"  # a plain string stays a string


def test_markets_by_condition_ids_finds_open_and_closed_and_chunks(fake, gamma):
    unknown = [f"0x{i:064x}" for i in range(150)]

    found = gamma.markets_by_condition_ids([KATANA_CID, *unknown, BTC_CID])

    assert [m["conditionId"] for m in found] == [KATANA_CID, BTC_CID]
    requests = paths(fake, "/gamma/markets/keyset")
    # 152 ids → 2 chunks, each asked for open and for closed markets.
    assert len(requests) == 4
    assert all(p.count("condition_ids=") <= 100 for p in requests)


def test_public_search_decodes_nested_markets(gamma):
    result = gamma.public_search("bitcoin")

    assert result["pagination"]["totalResults"] >= 1
    market = result["events"][0]["markets"][0]
    assert isinstance(market["clobTokenIds"], list)


# --- CLOB -----------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("name", "token"),
    [("clob/nt_clob_book_empty_ask_2026-08-03.json", EMPTY_ASK_TOKEN)],
)
def test_book_is_served_exactly_with_the_recorded_hash(fixtures_dir, clob, name, token):
    recorded = json.loads((fixtures_dir / name).read_text())

    book = clob.book(token)

    assert book == recorded  # every key, value and order; the hash is recomputed by the fake
    assert list(book) == list(recorded)


def test_live_capture_book_hash_matches(fixtures_dir, clob):
    capture = json.loads((fixtures_dir / "gamma/dk_live_api_capture_2026-06-20.json").read_text())
    recorded = next(r["sampleData"] for r in capture["results"] if r["label"] == "CLOB GET /book")

    book = clob.book(DK_TOKEN)

    assert book["hash"] == recorded["hash"] == "abf87d01d46fbb3a5227f2af0f80492dcb345638"
    # best price last: bids ascending, asks descending
    bids = [Decimal(level["price"]) for level in book["bids"]]
    asks = [Decimal(level["price"]) for level in book["asks"]]
    assert bids == sorted(bids) and asks == sorted(asks, reverse=True)


def test_books_posts_in_chunks_of_500(fake, clob):
    unknown = [str(10**70 + i) for i in range(600)]

    books = clob.books([EMPTY_ASK_TOKEN, *unknown, DK_TOKEN])

    assert {b["asset_id"] for b in books} == {EMPTY_ASK_TOKEN, DK_TOKEN}
    assert [m for m, t in fake.requests if t == "/clob/books"] == ["POST", "POST"]


def test_market_tick_size_fee_rate_and_compact_info(fixtures_dir, clob):
    recorded = json.loads((fixtures_dir / "clob/nt_clob_market_closed_winner_no.json").read_text())

    assert clob.market(KATANA_CID) == recorded
    assert clob.tick_size(EMPTY_ASK_TOKEN) == Decimal("0.001")
    assert clob.tick_size(BTC_UP) == Decimal("0.01")
    assert clob.fee_rate(BTC_UP) == Decimal("1000")  # takerBaseFee: a V1 cap in bps
    compact = clob.clob_market(SPORTS_CID)
    assert compact["fd"] == {"r": 0.03, "e": 1}
    assert compact["mts"] == 0.001
    assert clob.neg_risk(EMPTY_ASK_TOKEN) is True


def test_prices_history_needs_a_token_id(clob):
    history = clob.prices_history(DK_TOKEN, interval="max", fidelity=1)

    assert history and all(isinstance(p, Decimal) and isinstance(t, int) for t, p in history)
    cid = "0x1fad72fae204143ff1c3035e99e7c0f65ea8d5cd9bd1070987bd1a3316f772be"
    assert clob.prices_history(cid, interval="max") == []  # silently empty, as live


def test_server_time_and_ok(clob):
    assert clob.server_time() > 1_700_000_000
    assert clob.ok() is True


def test_markets_page_cursor_ends_with_lte(clob):
    first = clob.markets_page()
    second = clob.markets_page(first["next_cursor"])

    assert first["count"] == 100 and first["next_cursor"] == "MTAw"
    assert second["next_cursor"] == "LTE="


# --- Errors and retries ---------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("token", "status", "message"),
    [
        ("123", 404, "No orderbook exists for the requested token id"),
        ("not-a-token", 400, "Invalid token id"),
    ],
)
def test_error_bodies_raise_polymarket_error(fake, clob, token, status, message):
    with pytest.raises(PolymarketError) as caught:
        clob.book(token)

    assert (caught.value.status, caught.value.message) == (status, message)
    assert len(paths(fake, "/clob/book")) == 1  # 4xx is not retried


def test_gamma_unknown_market_is_a_404(gamma):
    with pytest.raises(PolymarketError) as caught:
        gamma.get_market("does-not-exist")

    assert caught.value.status == 404


def test_transient_503_is_retried(fake, clob):
    fake.fail_next(2, status=503, path_prefix="/clob/book")

    book = clob.book(EMPTY_ASK_TOKEN)

    assert book["asset_id"] == EMPTY_ASK_TOKEN
    assert len(paths(fake, "/clob/book")) == 3


def test_retries_are_bounded(fake):
    fake.fail_next(5, status=503, path_prefix="/clob/book", message="Trading is currently disabled")
    sleeps: list[float] = []

    with (
        ClobClient(fake.clob_url, retries=2, backoff=0.5, sleep=sleeps.append) as client,
        pytest.raises(PolymarketError) as caught,
    ):
        client.book(EMPTY_ASK_TOKEN)

    assert (caught.value.status, caught.value.message) == (503, "Trading is currently disabled")
    assert len(paths(fake, "/clob/book")) == 3
    assert len(sleeps) == 2 and all(0 <= s <= 1.0 for s in sleeps)  # jittered, capped


def test_429_is_retried_too(fake, clob):
    fake.fail_next(1, status=429, path_prefix="/gamma")

    with GammaClient(fake.gamma_url, backoff=0.001) as gamma:
        assert gamma.get_market("1812085")["id"] == "1812085"


def test_unreachable_server_raises_status_zero(fake):
    url = fake.clob_url
    fake.stop()
    sleeps: list[float] = []

    with (
        ClobClient(url, retries=1, sleep=sleeps.append, timeout=1) as client,
        pytest.raises(PolymarketError) as caught,
    ):
        client.book(EMPTY_ASK_TOKEN)

    assert caught.value.status == 0
    assert len(sleeps) == 1
