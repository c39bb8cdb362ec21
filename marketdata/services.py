"""Market-data writes: discovery upserts, the market lifecycle and its one resolution record,
and the feed's health counters.

Idempotency: every upsert is keyed on Polymarket's ids (event id, condition id, token id), so
discovery can run any number of times, concurrently included. The lifecycle is applied under
the market row lock; the first outcome report wins and creates the market's one
MarketResolution (unique on market), later reports are logged no-ops.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from decimal import ROUND_HALF_EVEN, Decimal
from typing import Any, NamedTuple, TypeVar

from django.conf import settings
from django.db import IntegrityError, models, transaction
from django.dispatch import Signal
from django.utils import timezone
from django.utils.module_loading import import_string

from core.money import CASH_QUANTUM, PRICE_QUANTUM
from marketdata import resolution as rs
from marketdata import states
from marketdata.clients import ClobClient, GammaClient, PolymarketError, decode_gamma_market
from marketdata.models import Event, FeedHealth, Market, MarketResolution, Token

logger = logging.getLogger("polysim.marketdata")

SOURCES = frozenset(MarketResolution.Source.values)

# Sent after commit with `resolution_id` whenever a MarketResolution is created or rewritten
# (manual resolution of an ambiguous market). Receivers should only enqueue work: the row and
# its `consumed_at` stay the source of truth (at-least-once; settle idempotently).
resolution_recorded = Signal()
# Sent after a commit that halted a market (open → closed, result pending), with
# `condition_id`: trading cancels the market's resting orders (docs/fill-model.md, "Closed
# and resolved markets"). marketdata imports no app, so the receiver lives in trading.
market_halted = Signal()

_M = TypeVar("_M", bound=models.Model)


# --- Small parsers at the edge ----------------------------------------------------------------
def _dec(value: Any, quantum: Decimal = CASH_QUANTUM) -> Decimal | None:
    number = rs.decimal_or_none(value)
    return number.quantize(quantum, rounding=ROUND_HALF_EVEN) if number is not None else None


def _price(value: Any) -> Decimal | None:
    number = _dec(value, PRICE_QUANTUM)
    return number if number is not None and Decimal(0) <= number <= Decimal(1) else None


def _when(value: Any) -> datetime | None:
    """Gamma dates: ISO with Z, a date only, or closedTime's "2026-03-19 23:20:15+00"."""
    if not value or not isinstance(value, str):
        return None
    try:
        parsed = datetime.fromisoformat(value.strip())
    except ValueError:
        return None
    if timezone.is_naive(parsed):
        parsed = parsed.replace(tzinfo=UTC)
    return parsed


def _text(value: Any, limit: int) -> str:
    return str(value)[:limit] if value is not None else ""


def _upsert(model: type[_M], lookup: dict[str, Any], defaults: dict[str, Any]) -> tuple[_M, bool]:
    """update_or_create that survives a concurrent insert of the same key (two discovery runs):
    the loser of the race updates the winner's row instead of failing."""
    try:
        with transaction.atomic():
            return model._default_manager.update_or_create(defaults=defaults, **lookup)
    except IntegrityError:
        obj, _ = model._default_manager.update_or_create(defaults=defaults, **lookup)
        return obj, False


# --- Upserts from Gamma -----------------------------------------------------------------------
def event_upsert_from_gamma(*, data: Mapping[str, Any]) -> tuple[Event, bool]:
    """Create or update an Event from a Gamma event object (or a market's `events[]` summary).
    Idempotent on the Gamma event id."""
    gamma_id = str(data.get("id") or "")
    if not gamma_id:
        raise ValueError("Gamma event without an id")
    defaults: dict[str, Any] = {
        "slug": _text(data.get("slug"), 255),
        "ticker": _text(data.get("ticker"), 255),
        "title": str(data.get("title") or data.get("slug") or gamma_id),
        "category": _text(data.get("category"), 64),
        "neg_risk": bool(data.get("negRisk") or data.get("enableNegRisk")),
        "neg_risk_market_id": _text(data.get("negRiskMarketID"), 80),
        "active": bool(data.get("active", True)),
        "closed": data.get("closed") is True,
        "start_date": _when(data.get("startDate")),
        "end_date": _when(data.get("endDate")),
        "volume": _dec(data.get("volume")) or Decimal(0),
        "liquidity": _dec(data.get("liquidity")) or Decimal(0),
    }
    return _upsert(Event, {"gamma_id": gamma_id}, defaults)


class MarketUpsert(NamedTuple):
    market: Market
    created: bool
    tokens_created: int


@transaction.atomic
def market_upsert_from_gamma(
    *, data: Mapping[str, Any], event: Event | None = None
) -> MarketUpsert:
    """Create or update a Market and its Tokens from a Gamma market object (raw or decoded).

    Idempotent on condition id / token id. Fields Gamma leaves out (tick size, minimum size
    and fee schedule are often missing on markets nested in /events) keep their stored value,
    so what discovery filled from the CLOB is not erased by the next pass. The lifecycle
    `status` is not touched here: see market_apply_verdict.
    """
    data = decode_gamma_market(data)
    condition_id = str(data.get("conditionId") or "")
    if not condition_id:
        raise ValueError(f"Gamma market {data.get('id')!r} has no conditionId")

    defaults: dict[str, Any] = {
        "gamma_id": str(data["id"]) if data.get("id") else None,
        "question_id": _text(data.get("questionID"), 80),
        "question": str(data.get("question") or condition_id),
        "slug": _text(data.get("slug"), 255),
        "group_item_title": _text(data.get("groupItemTitle"), 255),
        "neg_risk": data.get("negRisk") is True,
        "neg_risk_market_id": _text(data.get("negRiskMarketID"), 80),
        "enable_order_book": data.get("enableOrderBook") is True,
        "fees_enabled": data.get("feesEnabled") is True,
        "fee_type": _text(data.get("feeType"), 32),
        "active": bool(data.get("active", True)),
        "closed": data.get("closed") is True,
        "archived": data.get("archived") is True,
        "accepting_orders": data.get("acceptingOrders") is True,
        "end_date": _when(data.get("endDate")) or _when(data.get("endDateIso")),
        "closed_time": _when(data.get("closedTime")),
        "uma_resolution_status": _text(data.get("umaResolutionStatus"), 32),
        "volume": _dec(data.get("volumeNum", data.get("volume"))) or Decimal(0),
        "volume_24hr": _dec(data.get("volume24hr")) or Decimal(0),
        "liquidity": _dec(data.get("liquidityNum", data.get("liquidity"))) or Decimal(0),
        "best_bid": _price(data.get("bestBid")),
        "best_ask": _price(data.get("bestAsk")),
        "last_trade_price": _price(data.get("lastTradePrice")),
        "synced_at": timezone.now(),
    }
    category = data.get("category") or (event.category if event is not None else "")
    if category:
        defaults["category"] = _text(category, 64)
    if event is not None:
        defaults["event"] = event
    if (tick := _price(data.get("orderPriceMinTickSize"))) is not None and tick > 0:
        defaults["tick_size"] = tick
    if (min_size := _dec(data.get("orderMinSize"))) is not None:
        defaults["min_order_size"] = min_size
    defaults.update(_fee_fields_from_gamma(data))

    market, created = _upsert(Market, {"condition_id": condition_id}, defaults)

    outcomes = data.get("outcomes") or []
    token_ids = data.get("clobTokenIds") or []
    if len(outcomes) != len(token_ids):
        logger.warning(
            "market %s: %d outcomes but %d token ids", condition_id, len(outcomes), len(token_ids)
        )
    tokens_created = 0
    for index, (token_id, outcome) in enumerate(zip(token_ids, outcomes, strict=False)):
        _, token_created = _upsert(
            Token,
            {"token_id": str(token_id)},
            {"market": market, "outcome": _text(outcome, 100), "index": index},
        )
        tokens_created += token_created
    return MarketUpsert(market, created, tokens_created)


def _fee_fields_from_gamma(data: Mapping[str, Any]) -> dict[str, Any]:
    schedule = data.get("feeSchedule")
    if isinstance(schedule, Mapping) and rs.decimal_or_none(schedule.get("rate")) is not None:
        return {
            "fee_rate": _price(schedule.get("rate")),
            "fee_exponent": _dec(schedule.get("exponent"), Decimal("0.001")),
            "fee_taker_only": schedule.get("takerOnly") is not False,
            "fee_rebate_rate": _price(schedule.get("rebateRate")),
        }
    if data.get("feesEnabled") is False:
        return {"fee_rate": Decimal(0)}
    return {}  # unknown: keep what is stored (discovery asks the CLOB)


# --- Lifecycle ----------------------------------------------------------------------------------
def market_apply_verdict(
    *,
    market: Market,
    verdict: rs.ResolutionVerdict,
    source: str,
    evidence: Mapping[str, Any] | None = None,
) -> MarketResolution | None:
    """Apply one source's verdict to a market's lifecycle, once.

    Locks the market row (SELECT … FOR UPDATE) for the whole decision, so concurrent reports
    from the websocket, the CLOB and Gamma serialise. `closed_pending` moves an open market to
    `closed`; `resolved`/`void`/`ambiguous` create the market's one MarketResolution and move
    the status there. A later automated report is a logged no-op (the first one wins, even if
    it disagrees: that is logged as an error for an operator). A `manual` report may resolve an
    `ambiguous` market (rewriting its resolution and clearing `consumed_at`); any other change
    out of a final state raises IllegalTransition. `open` never reopens a market.

    Returns the MarketResolution created or rewritten by this call, else None.
    """
    if source not in SOURCES:
        raise ValueError(f"unknown resolution source {source!r}")
    if verdict.state == rs.OPEN:
        return None
    with transaction.atomic():
        locked = Market.objects.select_for_update().get(pk=market.pk)
        try:
            if verdict.state == rs.CLOSED_PENDING:
                _close_pending(locked, verdict, source)
                return None
            return _record_outcome(locked, verdict, source, evidence)
        finally:
            market.status = locked.status
            market.status_changed_at = locked.status_changed_at


def _close_pending(market: Market, verdict: rs.ResolutionVerdict, source: str) -> None:
    if market.status != states.OPEN:
        logger.debug(
            "market %s already %s; %s pending report ignored", market.pk, market.status, source
        )
        return
    states.ensure_transition(market.status, states.CLOSED)
    market.status = states.CLOSED
    market.status_changed_at = timezone.now()
    market.save(update_fields=["status", "status_changed_at", "updated_at"])
    condition_id = market.condition_id
    transaction.on_commit(lambda: market_halted.send(Market, condition_id=condition_id))
    logger.info(
        "market %s (%s) closed, result pending [%s: %s]",
        market.pk,
        market.condition_id,
        source,
        verdict.reason,
    )


def _record_outcome(
    market: Market,
    verdict: rs.ResolutionVerdict,
    source: str,
    evidence: Mapping[str, Any] | None,
) -> MarketResolution | None:
    target = verdict.state
    tokens = {token.token_id: token for token in market.tokens.all()}
    winner = tokens.get(verdict.winner_token_id or "")
    if target == states.RESOLVED and winner is None:
        logger.error(
            "market %s: %s names winner %s, which is not one of its tokens %s; ignored",
            market.condition_id,
            source,
            verdict.winner_token_id,
            sorted(tokens),
        )
        return None

    existing = MarketResolution.objects.filter(market=market).first()
    if existing is not None:
        return _report_after_outcome(market, existing, verdict, source, evidence, winner, tokens)

    states.ensure_transition(market.status, target)
    resolution = MarketResolution.objects.create(
        market=market,
        state=target,
        winning_token=winner if target == states.RESOLVED else None,
        winning_outcome=(winner.outcome if winner else "")[:100],
        payouts=_payouts(target, winner, tokens),
        source=source,
        reason=verdict.reason[:255],
        evidence=_evidence(verdict, evidence),
    )
    _set_status(market, target)
    logger.info(
        "market %s (%s) %s%s [%s: %s]",
        market.pk,
        market.condition_id,
        target,
        f", winner {winner.outcome}" if winner else "",
        source,
        verdict.reason,
    )
    transaction.on_commit(
        lambda: resolution_recorded.send(MarketResolution, resolution_id=resolution.pk)
    )
    return resolution


def _report_after_outcome(
    market: Market,
    existing: MarketResolution,
    verdict: rs.ResolutionVerdict,
    source: str,
    evidence: Mapping[str, Any] | None,
    winner: Token | None,
    tokens: dict[str, Token],
) -> MarketResolution | None:
    target = verdict.state
    if source == MarketResolution.Source.MANUAL:
        if existing.state != states.AMBIGUOUS or target == states.AMBIGUOUS:
            raise states.IllegalTransition(
                f"market is already {market.status}; a manual {target} cannot change it"
            )
        states.ensure_transition(market.status, target)
        existing.state = target
        existing.winning_token = winner if target == states.RESOLVED else None
        existing.winning_outcome = (winner.outcome if winner else "")[:100]
        existing.payouts = _payouts(target, winner, tokens)
        existing.source = source
        existing.reason = verdict.reason[:255]
        existing.detected_at = timezone.now()
        existing.evidence = {**(existing.evidence or {}), "manual": _evidence(verdict, evidence)}
        existing.consumed_at = None  # the trading app must settle it now
        existing.save()
        _set_status(market, target)
        logger.warning("market %s: ambiguous result resolved manually as %s", market.pk, target)
        transaction.on_commit(
            lambda: resolution_recorded.send(MarketResolution, resolution_id=existing.pk)
        )
        return existing

    same = existing.state == target and (
        target != states.RESOLVED or existing.winning_token_id == (winner.pk if winner else None)
    )
    log = logger.info if same else logger.error
    log(
        "market %s already %s (by %s); %s report of %s ignored%s",
        market.pk,
        existing.state,
        existing.source,
        source,
        target,
        "" if same else " — SOURCES DISAGREE, check it",
    )
    return None


def _payouts(target: str, winner: Token | None, tokens: dict[str, Token]) -> dict[str, str]:
    if target == states.RESOLVED and winner is not None:
        return {tid: ("1" if tid == winner.token_id else "0") for tid in tokens}
    if target == states.VOID:
        return {tid: "0.5" for tid in tokens}
    return {}


def _evidence(verdict: rs.ResolutionVerdict, raw: Mapping[str, Any] | None) -> dict[str, Any]:
    return {
        "verdict": {
            "state": verdict.state,
            "reason": verdict.reason,
            "winner_token_id": verdict.winner_token_id,
            "winner_outcome": verdict.winner_outcome,
            "payouts": {k: str(v) for k, v in verdict.payouts.items()},
        },
        "payload": dict(raw) if raw is not None else None,
    }


def _set_status(market: Market, target: str) -> None:
    market.status = target
    market.status_changed_at = timezone.now()
    market.save(update_fields=["status", "status_changed_at", "updated_at"])


def market_resolve_manually(
    *,
    market: Market,
    state: str,
    winning_token_id: str | None = None,
    note: str = "",
) -> MarketResolution:
    """An operator's resolution: `resolved` (with the winning token), `void` (pays 0.5 each)
    or `ambiguous`. Allowed on open, closed and ambiguous markets; raises IllegalTransition
    on a resolved or void one. Locking and idempotency as market_apply_verdict."""
    token_ids = tuple(market.tokens.values_list("token_id", flat=True))
    if state == states.RESOLVED and winning_token_id not in token_ids:
        raise states.IllegalTransition(f"{winning_token_id!r} is not a token of this market")
    if state not in states.OUTCOME_STATES:
        raise states.IllegalTransition(f"{state!r} is not a resolution state")
    verdict = rs.ResolutionVerdict(
        state,
        market.condition_id,
        token_ids,
        winner_token_id=winning_token_id if state == states.RESOLVED else None,
        reason=(note or "manual resolution")[:255],
    )
    resolution = market_apply_verdict(
        market=market, verdict=verdict, source=MarketResolution.Source.MANUAL
    )
    if resolution is None:  # pragma: no cover - manual reports either apply or raise
        raise states.IllegalTransition("the manual resolution was not applied")
    return resolution


def market_resolution_mark_consumed(*, resolution_id: int) -> bool:
    """Mark a resolution as settled by the trading app. Conditional UPDATE: True for the one
    caller that marked it, False if it was already consumed (safe to call twice)."""
    updated = MarketResolution.objects.filter(pk=resolution_id, consumed_at__isnull=True).update(
        consumed_at=timezone.now()
    )
    return updated == 1


# --- Feed health --------------------------------------------------------------------------------
def feed_health_report(
    *,
    shard: int,
    connections: int,
    subscribed_tokens: int,
    last_message_at: datetime | None,
    messages: int,
    stale_tokens: int,
    resyncs: int,
    hash_mismatches: int,
    reconnects: int,
    bus_error: str = "",
    bus_failures: int = 0,
) -> FeedHealth:
    """Upsert one shard's counters (the ingester calls this every few seconds; last write
    wins, no lock needed: one process owns a shard)."""
    health, _ = _upsert(
        FeedHealth,
        {"shard": shard},
        {
            "connections": connections,
            "subscribed_tokens": subscribed_tokens,
            "last_message_at": last_message_at,
            "messages": messages,
            "stale_tokens": stale_tokens,
            "resyncs": resyncs,
            "hash_mismatches": hash_mismatches,
            "reconnects": reconnects,
            "bus_error": bus_error,
            "bus_failures": bus_failures,
            "updated_at": timezone.now(),
        },
    )
    return health


# --- Discovery ----------------------------------------------------------------------------------
@dataclass
class DiscoveryResult:
    markets_seen: int = 0
    markets_created: int = 0
    markets_updated: int = 0
    events_created: int = 0
    events_updated: int = 0
    tokens_created: int = 0
    filled_from_clob: int = 0
    status_changes: int = 0
    resolutions: int = 0
    errors: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def discover(
    *,
    gamma: GammaClient,
    clob: ClobClient,
    limit: int | None = None,
    include_closed: bool = False,
) -> DiscoveryResult:
    """Upsert events, markets and tokens from Gamma (open markets; closed ones too when asked),
    apply each market's Gamma verdict, and fill tick size, minimum size and fee schedule from
    the CLOB where Gamma left them out (that CLOB answer's verdict is applied as well).

    Idempotent (see the upserts); each market is written in its own short transaction and no
    transaction is held across an HTTP call. A failing market is recorded in `errors` and
    skipped; Gamma itself being unreachable raises PolymarketError.
    """
    result = DiscoveryResult()
    events: dict[str, Event] = {}
    for data in gamma.iter_markets(closed=None if include_closed else False, limit=limit):
        result.markets_seen += 1
        label = str(data.get("conditionId") or data.get("id") or "?")
        try:
            market = _discover_market(data, events=events, result=result)
        except (PolymarketError, ValueError, IntegrityError) as exc:
            logger.warning("discovery skipped market %s: %s", label, exc)
            result.errors.append(f"{label}: {exc}")
            continue
        try:
            _fill_from_clob(market, clob=clob, result=result)
        except PolymarketError as exc:
            logger.warning("discovery: CLOB lookup for market %s failed: %s", label, exc)
            result.errors.append(f"{label}: CLOB {exc}")
    logger.info("discovery: %s", result.as_dict())
    return result


def tokens_in_use() -> set[str]:
    """Tokens trading needs now (live orders, open positions): the union of the functions
    named in MARKETDATA_TOKEN_SOURCES, a setting so that marketdata imports no other app."""
    ids: set[str] = set()
    for path in getattr(settings, "MARKETDATA_TOKEN_SOURCES", []):
        source: Callable[[], Iterable[str]] = import_string(path)
        ids.update(source())
    return ids


def markets_check_held(*, gamma: GammaClient, clob: ClobClient) -> DiscoveryResult:
    """Re-read from Gamma and the CLOB every market not final yet in which an account holds a
    position or a live order, and apply their verdicts: discovery asks Gamma for open markets
    only and the websocket's `market_resolved` is known not to arrive reliably, so this is
    what notices a resolution reported by one REST source alone (docs/operations.md). Run
    every 30 s by beat (`marketdata-check-held`)."""
    held = (
        Market.objects.filter(tokens__token_id__in=sorted(tokens_in_use()))
        .exclude(status__in=sorted(states.FINAL))
        .values_list("condition_id", flat=True)
        .distinct()
    )
    wanted = sorted(held)
    if not wanted:
        return DiscoveryResult()
    return discover_by_condition_ids(gamma=gamma, clob=clob, condition_ids=wanted, ask_clob=True)


def discover_by_condition_ids(
    *,
    gamma: GammaClient,
    clob: ClobClient,
    condition_ids: Iterable[str],
    ask_clob: bool = False,
) -> DiscoveryResult:
    """Discovery of named markets (e.g. announced by the websocket's `new_market`): the same
    upserts and verdicts as `discover`, for just these condition ids, open or closed. With
    `ask_clob`, the CLOB's verdict is read for every market not final yet (not only for closed
    ones), so a market resolved on the CLOB before Gamma says so is noticed.

    Idempotent, one short transaction per market, no transaction across an HTTP call. Ids
    Gamma does not know (yet) are reported in `errors`; Gamma unreachable raises.
    """
    result = DiscoveryResult()
    wanted = [cid for cid in dict.fromkeys(condition_ids) if cid]
    events: dict[str, Event] = {}
    found = gamma.markets_by_condition_ids(wanted)
    result.markets_seen = len(found)
    for data in found:
        label = str(data.get("conditionId") or data.get("id") or "?")
        try:
            market = _discover_market(data, events=events, result=result)
            _fill_from_clob(market, clob=clob, result=result, ask_verdict=ask_clob)
        except (PolymarketError, ValueError, IntegrityError) as exc:
            logger.warning("discovery skipped market %s: %s", label, exc)
            result.errors.append(f"{label}: {exc}")
    missing = set(wanted) - {str(d.get("conditionId")) for d in found}
    result.errors.extend(f"{cid}: not on Gamma yet" for cid in sorted(missing))
    logger.info("discovery of %d named market(s): %s", len(wanted), result.as_dict())
    return result


def _discover_market(
    data: dict[str, Any], *, events: dict[str, Event], result: DiscoveryResult
) -> Market:
    event = None
    summaries = data.get("events")
    if isinstance(summaries, list) and summaries and isinstance(summaries[0], Mapping):
        event_id = str(summaries[0].get("id") or "")
        if event_id and event_id not in events:
            events[event_id], created = event_upsert_from_gamma(data=summaries[0])
            if created:
                result.events_created += 1
            else:
                result.events_updated += 1
        event = events.get(event_id)

    upsert = market_upsert_from_gamma(data=data, event=event)
    market = upsert.market
    result.tokens_created += upsert.tokens_created
    if upsert.created:
        result.markets_created += 1
    else:
        result.markets_updated += 1
    _apply(market, rs.verdict_from_gamma(data), MarketResolution.Source.GAMMA, data, result)
    return market


def _fill_from_clob(
    market: Market, *, clob: ClobClient, result: DiscoveryResult, ask_verdict: bool = False
) -> None:
    """Trading rules Gamma left out, from the CLOB; a pending market's CLOB verdict too (any
    market's, with `ask_verdict`)."""
    if market.status in states.FINAL or market.status == states.AMBIGUOUS:
        return  # nothing left to trade: no need for trading rules
    if not market.enable_order_book:
        return  # AMM-era or not on the CLOB: the CLOB has nothing to say

    fill: dict[str, Any] = {}
    # A closed-but-pending market: the CLOB's winner flags may already be there.
    if (
        ask_verdict
        or market.tick_size is None
        or market.min_order_size is None
        or market.status == states.CLOSED
    ):
        clob_market = clob.market(market.condition_id)
        if market.tick_size is None:
            fill["tick_size"] = _price(clob_market.get("minimum_tick_size"))
        if market.min_order_size is None:
            fill["min_order_size"] = _dec(clob_market.get("minimum_order_size"))
        _apply(
            market,
            rs.verdict_from_clob(clob_market),
            MarketResolution.Source.CLOB,
            clob_market,
            result,
        )
    if market.fee_rate is None:
        compact = clob.clob_market(market.condition_id)
        fd = compact.get("fd")
        if isinstance(fd, Mapping) and rs.decimal_or_none(fd.get("r")) is not None:
            fill["fee_rate"] = _price(fd.get("r"))
            fill["fee_exponent"] = _dec(fd.get("e", 1), Decimal("0.001"))
    fill = {k: v for k, v in fill.items() if v is not None}
    if fill:
        Market.objects.filter(pk=market.pk).update(**fill, updated_at=timezone.now())
        for name, value in fill.items():
            setattr(market, name, value)
        result.filled_from_clob += 1


def _apply(
    market: Market,
    verdict: rs.ResolutionVerdict,
    source: str,
    evidence: Mapping[str, Any],
    result: DiscoveryResult,
) -> None:
    before = market.status
    resolution = market_apply_verdict(
        market=market, verdict=verdict, source=source, evidence=evidence
    )
    if market.status != before:
        result.status_changes += 1
    if resolution is not None:
        result.resolutions += 1
