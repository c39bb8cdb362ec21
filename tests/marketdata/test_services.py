"""Discovery against the fake Polymarket (demo dataset and recorded fixtures) and the market
lifecycle: one MarketResolution however many sources report, illegal changes refused."""

from __future__ import annotations

import logging
import threading
from decimal import Decimal
from pathlib import Path

import pytest
from django.db import connection

from devtools.fakepoly import DEMO_DATA_DIR, FakePolymarket
from marketdata import resolution as rs
from marketdata import states
from marketdata.clients import ClobClient, GammaClient
from marketdata.models import Event, FeedHealth, Market, MarketResolution, Token
from marketdata.services import (
    discover,
    feed_health_report,
    market_apply_verdict,
    market_resolution_mark_consumed,
    market_resolve_manually,
    resolution_recorded,
)

FX = Path("fixtures/polymarket")
WS, CLOB, GAMMA, MANUAL = "ws", "clob", "gamma", "manual"


def serve(path):
    server = FakePolymarket(path, seed=3).start_in_thread()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def demo():
    yield from serve(DEMO_DATA_DIR)


@pytest.fixture
def recorded(shared_dir):
    yield from serve(shared_dir / FX)


@pytest.fixture
def clients(demo):
    with (
        GammaClient(demo.gamma_url, backoff=0.001) as gamma,
        ClobClient(demo.clob_url, backoff=0.001) as clob,
    ):
        yield gamma, clob


def run_discovery(fake, **kwargs):
    with (
        GammaClient(fake.gamma_url, backoff=0.001) as gamma,
        ClobClient(fake.clob_url, backoff=0.001) as clob,
    ):
        return discover(gamma=gamma, clob=clob, **kwargs)


def by_slug(prefix: str) -> Market:
    return Market.objects.get(slug__startswith=prefix)


def counts():
    return (
        Event.objects.count(),
        Market.objects.count(),
        Token.objects.count(),
        MarketResolution.objects.count(),
    )


# --- Discovery ----------------------------------------------------------------------------------
@pytest.mark.django_db
def test_discover_demo_dataset_fills_gaps_from_the_clob(demo):
    result = run_discovery(demo, include_closed=True)

    assert result.errors == []
    assert (result.markets_created, result.events_created, result.tokens_created) == (10, 8, 20)
    assert counts() == (8, 10, 20, 1)

    # Neg-risk markets nested in /events carry no tick size: filled from the CLOB.
    mayor = Market.objects.filter(neg_risk=True)
    assert mayor.count() == 3
    assert {m.tick_size for m in mayor} == {Decimal("0.001")}
    assert len({m.neg_risk_market_id for m in mayor}) == 1
    assert {m.event.title for m in mayor} == {"Northbridge Mayoral Election 2027 (SYNTHETIC)"}
    # feesEnabled without a feeSchedule: rate and exponent from the CLOB's fd.
    sports = by_slug("synthetic-hawks-vs-lynx")
    assert (sports.fee_rate, sports.fee_exponent) == (Decimal("0.03"), Decimal("1"))
    assert list(sports.tokens.values_list("outcome", flat=True)) == ["Hawks", "Lynx"]
    # Gamma's own schedule.
    coin = by_slug("synthetic-synthcoin")
    assert (coin.fee_rate, coin.fee_exponent, coin.fee_taker_only, coin.fee_rebate_rate) == (
        Decimal("0.07"),
        Decimal("1"),
        True,
        Decimal("0.2"),
    )
    assert coin.tick_size == Decimal("0.01") and coin.min_order_size == Decimal("5")
    assert by_slug("synthetic-aurora").fee_rate == Decimal("0")  # feesEnabled false
    assert result.filled_from_clob == 4
    # Gamma floats arrive as exact decimals.
    assert coin.best_bid == Decimal("0.61") and coin.volume == Decimal("96512.4")

    # The closed demo market is resolved from Gamma, once.
    bypass = by_slug("synthetic-tallbridge")
    resolution = bypass.resolution
    assert bypass.status == states.RESOLVED
    assert (resolution.state, resolution.source, resolution.winning_outcome) == (
        states.RESOLVED,
        GAMMA,
        "Yes",
    )
    assert resolution.payouts_decimal == {
        bypass.tokens.get(index=0).token_id: Decimal("1"),
        bypass.tokens.get(index=1).token_id: Decimal("0"),
    }
    assert Market.objects.filter(status=states.OPEN).count() == 9


@pytest.mark.django_db
def test_discover_is_idempotent_and_keeps_clob_filled_values(demo):
    run_discovery(demo, include_closed=True)
    before = counts()
    clob_calls = len([t for _, t in demo.requests if t.startswith("/clob/")])

    again = run_discovery(demo, include_closed=True)

    assert counts() == before
    assert (again.markets_created, again.events_created, again.tokens_created) == (0, 0, 0)
    assert (again.markets_updated, again.resolutions, again.status_changes) == (10, 0, 0)
    assert {m.tick_size for m in Market.objects.filter(neg_risk=True)} == {Decimal("0.001")}
    assert by_slug("synthetic-hawks-vs-lynx").fee_rate == Decimal("0.03")
    # nothing left to fill: the second pass asks the CLOB nothing
    assert len([t for _, t in demo.requests if t.startswith("/clob/")]) == clob_calls


@pytest.mark.django_db
def test_discover_open_only_by_default_and_limit(demo):
    result = run_discovery(demo, limit=4)

    assert result.markets_seen == 4
    assert Market.objects.count() == 4
    assert not Market.objects.filter(closed=True).exists()


@pytest.mark.django_db
def test_discover_recorded_fixtures(recorded):
    result = run_discovery(recorded, include_closed=True)
    again = run_discovery(recorded, include_closed=True)

    assert result.errors == [] and again.errors == []
    assert Market.objects.count() == 14 and again.markets_created == 0
    status = dict(Market.objects.values_list("condition_id", "status"))
    assert (
        status["0xd57eed0d44f5b8ca54925d8d6ff440b146b3e6e071da18136ee3ee572d34479e"] == "resolved"
    )
    assert (
        status["0x8ccc3f4951ff02c1d34b87988752b4444ad17228732780a6cf22afefe8478bb6"] == "resolved"
    )
    assert (
        status["0xe3b423dfad8c22ff75c9899c4e8176f628cf4ad4caa00481764d320e7415f7a9"] == "ambiguous"
    )
    assert (
        status["0x7333b6e016f7f60d86f15f11ed0b41b69deec0b6d73b86933639b1f39a545d87"] == "ambiguous"
    )
    assert status["0x72af7d77091bd2209f78a45a13876beefc734768177dbc0c8171f515ba1a52a7"] == "open"
    assert MarketResolution.objects.count() == result.resolutions == 7
    assert set(MarketResolution.objects.values_list("state", flat=True)) == {
        "resolved",
        "ambiguous",
    }
    assert not MarketResolution.objects.filter(state="ambiguous").exclude(payouts={}).exists()
    negrisk = Event.objects.get(gamma_id="30829")
    assert negrisk.neg_risk and negrisk.markets.count() == 2
    dk = Market.objects.get(gamma_id="540817")
    assert (dk.fee_rate, dk.fee_rebate_rate, dk.event.gamma_id) == (
        Decimal("0.05"),
        Decimal("0.25"),
        "23784",
    )


# --- Lifecycle ----------------------------------------------------------------------------------
@pytest.fixture
def discovered(demo, db):
    run_discovery(demo, include_closed=True)
    return demo


def rain_market(fake) -> tuple[Market, list[str]]:
    market = by_slug("synthetic-port-ellis")
    return market, fake.pairs[market.condition_id]


def reports(fake, clients, market):
    gamma, clob = clients
    return (
        clob.market(market.condition_id),
        gamma.get_market(market.gamma_id),
    )


@pytest.mark.django_db
def test_one_resolution_however_many_sources_report(
    discovered, clients, django_capture_on_commit_callbacks
):
    market, (yes, no) = rain_market(discovered)
    ws_message = discovered.resolve_market(market.condition_id, yes)
    clob_market, gamma_market = reports(discovered, clients, market)
    recorded = []

    def receiver(sender, resolution_id, **kwargs):
        recorded.append(resolution_id)

    resolution_recorded.connect(receiver)
    try:
        with django_capture_on_commit_callbacks(execute=True):
            first = market_apply_verdict(
                market=market,
                verdict=rs.verdict_from_ws(ws_message),
                source=WS,
                evidence=ws_message,
            )
            second = market_apply_verdict(
                market=market, verdict=rs.verdict_from_clob(clob_market), source=CLOB
            )
            third = market_apply_verdict(
                market=market, verdict=rs.verdict_from_gamma(gamma_market), source=GAMMA
            )
            again = market_apply_verdict(
                market=market, verdict=rs.verdict_from_ws(ws_message), source=WS
            )
    finally:
        resolution_recorded.disconnect(receiver)

    assert first is not None and (second, third, again) == (None, None, None)
    assert MarketResolution.objects.filter(market=market).count() == 1
    market.refresh_from_db()
    resolution = market.resolution
    assert market.status == states.RESOLVED
    assert (resolution.source, resolution.winning_token.token_id) == (WS, yes)
    assert resolution.payouts == {yes: "1", no: "0"}
    assert resolution.payout_for(no) == Decimal("0")
    assert resolution.evidence["payload"]["event_type"] == "market_resolved"
    assert resolution.consumed_at is None
    assert recorded == [resolution.pk]


@pytest.mark.django_db
def test_closed_then_resolved_then_later_reports_are_noops(discovered, caplog):
    market, (yes, no) = rain_market(discovered)
    pending = rs.ResolutionVerdict(rs.CLOSED_PENDING, market.condition_id, (yes, no))
    resolved_no = rs.ResolutionVerdict(
        rs.RESOLVED, market.condition_id, (yes, no), winner_token_id=no, payouts={}
    )
    resolved_yes = rs.ResolutionVerdict(
        rs.RESOLVED, market.condition_id, (yes, no), winner_token_id=yes, payouts={}
    )

    assert market_apply_verdict(market=market, verdict=pending, source=GAMMA) is None
    assert market.status == states.CLOSED
    assert market_apply_verdict(market=market, verdict=pending, source=CLOB) is None
    assert market_apply_verdict(market=market, verdict=resolved_no, source=CLOB) is not None
    with caplog.at_level(logging.ERROR, logger="polysim.marketdata"):
        assert market_apply_verdict(market=market, verdict=resolved_yes, source=GAMMA) is None
    # an "open" report never reopens anything
    open_verdict = rs.ResolutionVerdict(rs.OPEN, market.condition_id)
    assert market_apply_verdict(market=market, verdict=open_verdict, source=GAMMA) is None

    market.refresh_from_db()
    assert market.status == states.RESOLVED
    assert market.resolution.winning_token.token_id == no  # the first report won
    assert "SOURCES DISAGREE" in caplog.text


@pytest.mark.django_db
def test_void_pays_half_to_both_tokens(discovered, clients):
    market, (yes, no) = rain_market(discovered)
    discovered.resolve_market(market.condition_id, None)
    clob_market, _ = reports(discovered, clients, market)

    resolution = market_apply_verdict(
        market=market, verdict=rs.verdict_from_clob(clob_market), source=CLOB
    )

    assert resolution is not None and resolution.state == states.VOID
    assert resolution.winning_token is None
    assert resolution.payouts_decimal == {yes: Decimal("0.5"), no: Decimal("0.5")}
    assert Market.objects.get(pk=market.pk).status == states.VOID


@pytest.mark.django_db
def test_ambiguous_is_flagged_then_resolved_manually_once(discovered):
    market, (yes, no) = rain_market(discovered)
    ambiguous = rs.ResolutionVerdict(rs.AMBIGUOUS, market.condition_id, (yes, no), reason="0/0")

    flagged = market_apply_verdict(market=market, verdict=ambiguous, source=GAMMA)
    assert flagged is not None and flagged.payouts == {}
    assert market_resolution_mark_consumed(resolution_id=flagged.pk) is True

    manual = market_resolve_manually(market=market, state=states.RESOLVED, winning_token_id=no)

    assert manual.pk == flagged.pk  # the one row, rewritten
    assert (manual.state, manual.source, manual.consumed_at) == (states.RESOLVED, MANUAL, None)
    assert manual.payouts == {yes: "0", no: "1"}
    assert Market.objects.get(pk=market.pk).status == states.RESOLVED
    with pytest.raises(states.IllegalTransition):
        market_resolve_manually(market=market, state=states.VOID)


@pytest.mark.django_db
def test_manual_resolution_of_an_open_market_and_its_refusals(discovered):
    market, (yes, _) = rain_market(discovered)

    with pytest.raises(states.IllegalTransition):
        market_resolve_manually(market=market, state=states.RESOLVED, winning_token_id="nope")
    with pytest.raises(states.IllegalTransition):
        market_resolve_manually(market=market, state=states.OPEN)
    resolution = market_resolve_manually(market=market, state=states.VOID, note="cancelled event")

    assert (resolution.state, resolution.reason) == (states.VOID, "cancelled event")
    with pytest.raises(states.IllegalTransition):
        market_resolve_manually(market=market, state=states.RESOLVED, winning_token_id=yes)


@pytest.mark.django_db
def test_winner_outside_the_market_is_ignored(discovered, caplog):
    market, tokens = rain_market(discovered)
    verdict = rs.ResolutionVerdict(
        rs.RESOLVED, market.condition_id, tuple(tokens), winner_token_id="123", payouts={}
    )

    with caplog.at_level(logging.ERROR, logger="polysim.marketdata"):
        assert market_apply_verdict(market=market, verdict=verdict, source=WS) is None

    assert not MarketResolution.objects.filter(market=market).exists()
    assert Market.objects.get(pk=market.pk).status == states.OPEN


@pytest.mark.django_db
def test_unknown_source_is_refused(discovered):
    market, _ = rain_market(discovered)

    with pytest.raises(ValueError):
        market_apply_verdict(
            market=market,
            verdict=rs.ResolutionVerdict(rs.CLOSED_PENDING, market.condition_id),
            source="rumour",
        )


@pytest.mark.parametrize(
    ("current", "target"),
    [
        (states.RESOLVED, states.OPEN),
        (states.RESOLVED, states.VOID),
        (states.VOID, states.RESOLVED),
        (states.CLOSED, states.OPEN),
        (states.AMBIGUOUS, states.OPEN),
        (states.AMBIGUOUS, states.CLOSED),
        (states.OPEN, "settled"),
    ],
)
def test_illegal_transitions_are_refused(current, target):
    with pytest.raises(states.IllegalTransition) as caught:
        states.ensure_transition(current, target)

    assert caught.value.code == "ILLEGAL_TRANSITION" and caught.value.status == 409


def test_final_states_have_no_exits():
    assert {states.RESOLVED, states.VOID} == states.FINAL
    for state in states.MARKET_TRANSITIONS:
        assert state not in states.MARKET_TRANSITIONS[state]


@pytest.mark.django_db
def test_mark_consumed_is_conditional(discovered):
    market, (yes, _) = rain_market(discovered)
    resolution = market_resolve_manually(market=market, state=states.RESOLVED, winning_token_id=yes)

    assert market_resolution_mark_consumed(resolution_id=resolution.pk) is True
    assert market_resolution_mark_consumed(resolution_id=resolution.pk) is False


@pytest.mark.django_db
def test_feed_health_report_upserts_per_shard():
    for messages in (10, 25):
        feed_health_report(
            shard=2,
            connections=1,
            subscribed_tokens=400,
            last_message_at=None,
            messages=messages,
            stale_tokens=3,
            resyncs=1,
            hash_mismatches=2,
            reconnects=0,
        )

    health = FeedHealth.objects.get()
    assert (health.shard, health.messages, health.stale_tokens, health.hash_mismatches) == (
        2,
        25,
        3,
        2,
    )


# --- Concurrency (PostgreSQL row locks) ----------------------------------------------------------
@pytest.mark.django_db(transaction=True)
def test_concurrent_reports_from_three_sources_create_one_resolution(demo):
    run_discovery(demo)
    market, (yes, _) = rain_market(demo)
    ws_message = demo.resolve_market(market.condition_id, yes)
    with GammaClient(demo.gamma_url) as gamma, ClobClient(demo.clob_url) as clob:
        verdicts = [
            (WS, rs.verdict_from_ws(ws_message)),
            (CLOB, rs.verdict_from_clob(clob.market(market.condition_id))),
            (GAMMA, rs.verdict_from_gamma(gamma.get_market(market.gamma_id))),
        ] * 3
    barrier = threading.Barrier(len(verdicts))
    results: list[object] = []
    errors: list[BaseException] = []

    def report(source, verdict):
        try:
            barrier.wait(5)
            results.append(
                market_apply_verdict(
                    market=Market.objects.get(pk=market.pk), verdict=verdict, source=source
                )
            )
        except BaseException as exc:  # surfaced by the assertion below
            errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=report, args=pair) for pair in verdicts]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(20)

    assert errors == []
    assert sum(r is not None for r in results) == 1
    assert MarketResolution.objects.filter(market=market).count() == 1
    assert Market.objects.get(pk=market.pk).status == states.RESOLVED
