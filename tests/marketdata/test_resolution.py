"""Resolution parsing (polymarket.md §3) on every recorded Gamma and CLOB market fixture and the
websocket market_resolved event, plus synthetic dicts for the cases no recording covers
(50-50, disagreeing flags)."""

from __future__ import annotations

import json
from collections import Counter
from decimal import Decimal
from pathlib import Path

import pytest

from marketdata import resolution as rs

FX = Path("fixtures/polymarket")

CEASEFIRE_YES = "22978793223071892222859460592277435458011604214087068523744633723809814935807"
CEASEFIRE_NO = "108268928354766371660560153450121076545199284531791348447523752861907448942629"
KATANA_YES = "108872296183993054938831082799825620165440189659433018108548854929333464287226"
KATANA_NO = "89711174926330519158043401581181146613785179104141808554061413232025882707365"
FAZE = "89972346417086440659189114668296975440208562769200022591480064439842896371398"
ILLWILL = "90510951248295963583566830308208121966213462932425555585207203442852394431867"
WS_WINNER = "76043073756653678226373981964075571318267289248134717369284518995922789326425"
WS_LOSER = "31690934263385727664202099278545688007799199447969475608906331829650099442770"

ONE, ZERO, HALF = Decimal("1"), Decimal("0"), Decimal("0.5")


def load(shared_dir: Path, name: str):
    return json.loads((shared_dir / FX / name).read_text())


# --- Gamma ----------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("name", "state", "winner", "outcome"),
    [
        # closed, umaResolutionStatus "resolved", prices 0/1
        ("nt_gamma_market_resolved_no_uma_resolved.json", rs.RESOLVED, KATANA_NO, "No"),
        # closed, prices 1/0, no UMA status, acceptingOrders still true: one-hot decides
        ("nt_gamma_market_closed_yes_accepting_true.json", rs.RESOLVED, CEASEFIRE_YES, "Yes"),
        # non Yes/No outcomes
        ("nt_gamma_market_sports_moneyline.json", rs.RESOLVED, FAZE, "FaZe"),
        # legacy 0/0: no winner can ever be read
        ("nt_gamma_market_closed_legacy_zero_zero.json", rs.AMBIGUOUS, None, None),
        # legacy AMM prices with long decimals
        ("nt_gamma_market_closed_legacy_nonbinary_prices.json", rs.AMBIGUOUS, None, None),
        # open, and past its endDate: endDate is not a close signal
        ("nt_gamma_market_negrisk_past_enddate_open.json", rs.OPEN, None, None),
        ("nt_gamma_market_btc_updown_5m_fees.json", rs.OPEN, None, None),
    ],
)
def test_gamma_fixture_verdicts(shared_dir, name, state, winner, outcome):
    verdict = rs.verdict_from_gamma(load(shared_dir, f"gamma/{name}"))

    assert verdict.state == state, verdict.reason
    assert verdict.winner_token_id == winner
    assert verdict.winner_outcome == outcome
    if state == rs.RESOLVED:
        assert verdict.payouts[winner] == ONE
        assert sorted(verdict.payouts.values()) == [ZERO, ONE]
    else:
        assert verdict.payouts == {}


def test_gamma_resolved_payouts_map_both_tokens(shared_dir):
    verdict = rs.verdict_from_gamma(load(shared_dir, "gamma/nt_gamma_market_sports_moneyline.json"))

    assert verdict.payouts == {FAZE: ONE, ILLWILL: ZERO}
    assert verdict.condition_id == (
        "0x202abb9a80673068ec5ce9294d60e31eeaf3ab5c82fb21fb0c9142e5d0cab385"
    )


def test_gamma_open_markets_nested_in_events_search_and_capture(shared_dir):
    event = load(shared_dir, "gamma/nt_gamma_event_negrisk_dem_nominee_2028.json")[0]
    capture = load(shared_dir, "gamma/dk_live_api_capture_2026-06-20.json")
    search = load(shared_dir, "gamma/nt_gamma_public_search.json")
    by_label = {r["label"]: r["sampleData"] for r in capture["results"]}
    markets = [
        *event["markets"],
        *by_label["Gamma GET /markets"],
        by_label["Gamma GET /markets/{id}"],
        *(m for found in search["events"] for m in found["markets"]),
    ]

    verdicts = [rs.verdict_from_gamma(m) for m in markets]

    assert len(verdicts) == 6
    assert {v.state for v in verdicts} == {rs.OPEN}


def test_gamma_amm_era_events_in_capture_resolve_by_one_hot_tolerance(shared_dir):
    # Two closed 2021 sports markets, prices 0.0000004… / 0.9999995…: one-hot within 0.001.
    capture = load(shared_dir, "gamma/dk_live_api_capture_2026-06-20.json")
    events = next(r["sampleData"] for r in capture["results"] if r["label"] == "Gamma GET /events")
    markets = [m for e in events for m in e["markets"]]

    verdicts = [rs.verdict_from_gamma(m) for m in markets]

    assert len(verdicts) == 2
    for market, verdict in zip(markets, verdicts, strict=True):
        assert verdict.state == rs.RESOLVED
        assert verdict.winner_token_id == json.loads(market["clobTokenIds"])[1]
        assert verdict.winner_outcome == json.loads(market["outcomes"])[1]


def test_gamma_decoded_lists_parse_like_json_strings(shared_dir):
    raw = load(shared_dir, "gamma/nt_gamma_market_resolved_no_uma_resolved.json")
    decoded = {
        **raw,
        **{k: json.loads(raw[k]) for k in ("outcomes", "outcomePrices", "clobTokenIds")},
    }

    assert rs.verdict_from_gamma(decoded) == rs.verdict_from_gamma(raw)


def gamma(prices, *, closed=True, uma=None, outcomes=("Yes", "No"), tokens=("111", "222")):
    market = {
        "conditionId": "0xsynthetic",
        "closed": closed,
        "acceptingOrders": True,
        "outcomes": json.dumps(list(outcomes)),
        "outcomePrices": json.dumps(prices),
        "clobTokenIds": json.dumps(list(tokens)),
    }
    if uma is not None:
        market["umaResolutionStatus"] = uma
    return market


def test_gamma_fifty_fifty_resolved_by_uma_is_void_paying_half():
    verdict = rs.verdict_from_gamma(gamma(["0.5", "0.5"], uma="resolved"))

    assert verdict.state == rs.VOID
    assert verdict.payouts == {"111": HALF, "222": HALF}
    assert verdict.winner_token_id is None


def test_gamma_half_half_without_final_uma_status_is_pending_not_void():
    # The last traded prices of a closed market can sit at 0.5; only a final result pays 0.5.
    verdict = rs.verdict_from_gamma(gamma(["0.5", "0.5"]))

    assert verdict.state == rs.CLOSED_PENDING


@pytest.mark.parametrize(
    ("prices", "uma", "state"),
    [
        (["0.62", "0.38"], None, rs.CLOSED_PENDING),  # closed, result not in yet
        (["0.7", "0.3"], "resolved", rs.CLOSED_PENDING),  # UMA flag ahead of the prices
        (["0.9995", "0.0005"], None, rs.RESOLVED),  # within the one-hot tolerance
        (["0.998", "0.002"], None, rs.CLOSED_PENDING),  # outside it
        (["1", "1"], None, rs.CLOSED_PENDING),  # two winners is not one-hot
        (["0", "0"], "resolved", rs.AMBIGUOUS),
        (["0.5843311669", "0.4156688331"], None, rs.AMBIGUOUS),  # off every tick grid
    ],
)
def test_gamma_closed_price_rules(prices, uma, state):
    assert rs.verdict_from_gamma(gamma(prices, uma=uma)).state == state


def test_gamma_not_closed_is_open_even_with_one_hot_prices_and_uma_resolved():
    assert rs.verdict_from_gamma(gamma(["1", "0"], closed=False, uma="resolved")).state == rs.OPEN


def test_gamma_closed_non_binary_market_is_ambiguous():
    market = gamma(["1", "0", "0"], outcomes=("A", "B", "C"), tokens=("1", "2", "3"))

    assert rs.verdict_from_gamma(market).state == rs.AMBIGUOUS


def test_gamma_closed_without_prices_is_pending():
    market = gamma(["1", "0"])
    del market["outcomePrices"]

    assert rs.verdict_from_gamma(market).state == rs.CLOSED_PENDING


# --- CLOB -----------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("name", "state", "winner", "outcome"),
    [
        # accepting_orders is still true: ignored
        ("nt_clob_market_closed_winner_yes.json", rs.RESOLVED, CEASEFIRE_YES, "Yes"),
        ("nt_clob_market_closed_winner_no.json", rs.RESOLVED, KATANA_NO, "No"),
        ("nt_clob_market_negrisk_open.json", rs.OPEN, None, None),
    ],
)
def test_clob_fixture_verdicts(shared_dir, name, state, winner, outcome):
    verdict = rs.verdict_from_clob(load(shared_dir, f"clob/{name}"))

    assert verdict.state == state
    assert verdict.winner_token_id == winner
    assert verdict.winner_outcome == outcome


def test_clob_markets_page_winner_flags_decide(shared_dir):
    page = load(shared_dir, "clob/nt_clob_markets_page.json")

    verdicts = [rs.verdict_from_clob(m) for m in page["data"]]

    # 24 closed with a winner flag, 74 closed without one (AMM-era or unresolved), 2 open.
    assert Counter(v.state for v in verdicts) == {
        rs.RESOLVED: 24,
        rs.CLOSED_PENDING: 74,
        rs.OPEN: 2,
    }
    for market, verdict in zip(page["data"], verdicts, strict=True):
        if verdict.state == rs.RESOLVED:
            flagged = [t["token_id"] for t in market["tokens"] if t["winner"]]
            assert [verdict.winner_token_id] == flagged


def test_clob_and_gamma_agree_on_the_same_markets(shared_dir):
    pairs = [
        (
            "clob/nt_clob_market_closed_winner_yes.json",
            "gamma/nt_gamma_market_closed_yes_accepting_true.json",
        ),
        (
            "clob/nt_clob_market_closed_winner_no.json",
            "gamma/nt_gamma_market_resolved_no_uma_resolved.json",
        ),
    ]
    for clob_name, gamma_name in pairs:
        clob = rs.verdict_from_clob(load(shared_dir, clob_name))
        gamma_verdict = rs.verdict_from_gamma(load(shared_dir, gamma_name))

        assert clob.condition_id == gamma_verdict.condition_id
        assert (clob.state, clob.winner_token_id, clob.payouts) == (
            gamma_verdict.state,
            gamma_verdict.winner_token_id,
            gamma_verdict.payouts,
        )


def clob(tokens, *, closed=True, fifty_fifty=False):
    return {
        "condition_id": "0xc",
        "closed": closed,
        "is_50_50_outcome": fifty_fifty,
        "tokens": tokens,
    }


def test_clob_fifty_fifty_is_void():
    verdict = rs.verdict_from_clob(
        clob(
            [
                {"token_id": "1", "outcome": "Yes", "price": 0.5, "winner": False},
                {"token_id": "2", "outcome": "No", "price": 0.5, "winner": False},
            ],
            fifty_fifty=True,
        )
    )

    assert verdict.state == rs.VOID
    assert verdict.payouts == {"1": HALF, "2": HALF}


def test_clob_two_winner_flags_is_ambiguous():
    verdict = rs.verdict_from_clob(
        clob(
            [
                {"token_id": "1", "outcome": "Yes", "price": 1, "winner": True},
                {"token_id": "2", "outcome": "No", "price": 1, "winner": True},
            ]
        )
    )

    assert verdict.state == rs.AMBIGUOUS


def test_clob_closed_without_winner_is_pending_even_at_one_zero_prices():
    verdict = rs.verdict_from_clob(
        clob(
            [
                {"token_id": "1", "outcome": "Yes", "price": 1, "winner": False},
                {"token_id": "2", "outcome": "No", "price": 0, "winner": False},
            ]
        )
    )

    assert verdict.state == rs.CLOSED_PENDING


# --- Websocket ------------------------------------------------------------------------------------
def test_ws_market_resolved_fixture(shared_dir):
    verdict = rs.verdict_from_ws(load(shared_dir, "ws/nt_ws_market_resolved.json"))

    assert verdict.state == rs.RESOLVED
    assert verdict.condition_id == (
        "0x311d0c4b6671ab54af4970c06fcf58662516f5168997bdda209ec3db5aa6b0c1"
    )
    assert verdict.winner_token_id == WS_WINNER
    assert verdict.winner_outcome == "Yes"
    assert verdict.payouts == {WS_WINNER: ONE, WS_LOSER: ZERO}


def test_ws_aliases_are_accepted():
    verdict = rs.verdict_from_ws(
        {
            "event_type": "market_resolved",
            "market": "0xm",
            "token_ids": ["a1", "b2"],
            "winning_token_id": "b2",
            "winning_outcome": "No",
        }
    )

    assert (verdict.state, verdict.winner_token_id) == (rs.RESOLVED, "b2")
    assert verdict.payouts == {"a1": ZERO, "b2": ONE}


@pytest.mark.parametrize(
    "message",
    [
        {"event_type": "market_resolved", "market": "0xm", "assets_ids": ["1", "2"]},
        {
            "event_type": "market_resolved",
            "market": "0xm",
            "assets_ids": ["1", "2"],
            "winning_asset_id": "3",
        },
    ],
)
def test_ws_without_a_usable_winner_is_only_a_close_signal(message):
    assert rs.verdict_from_ws(message).state == rs.CLOSED_PENDING


def test_ws_other_events_are_refused():
    with pytest.raises(ValueError):
        rs.verdict_from_ws({"event_type": "book"})


def test_json_list_decodes_strings_and_passes_lists():
    assert rs.json_list('["Yes", "No"]') == ["Yes", "No"]
    assert rs.json_list(["Yes"]) == ["Yes"]
    assert rs.json_list("not json") is None
    assert rs.json_list('{"a": 1}') is None
    assert rs.json_list(None) is None


def test_decimal_or_none_keeps_floats_exact_through_str():
    assert rs.decimal_or_none(0.01) == Decimal("0.01")
    assert rs.decimal_or_none("0.505") == Decimal("0.505")
    assert rs.decimal_or_none("NaN") is None
    assert rs.decimal_or_none(True) is None
