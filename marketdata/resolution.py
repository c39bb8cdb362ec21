"""Resolution parsing (polymarket.md §3): pure functions from one source's view of a market to
a ResolutionVerdict. No I/O, no database; services.market_apply_verdict applies verdicts.

Sources, fastest first, each with its own rule:

* websocket `market_resolved` (custom feature): `winning_asset_id` names the winner.
* CLOB `GET /markets/{condition_id}`: `closed` and exactly one `tokens[i].winner`.
* Gamma market: `closed` and (`umaResolutionStatus == "resolved"` or strictly one-hot
  `outcomePrices`: one price ≥ 0.999, every other ≤ 0.001).

Rules that are easy to get wrong, each backed by a recorded fixture:

* `acceptingOrders` / `accepting_orders` is never read: it stays true after close.
* `closed` alone means halted, not final: prices that are not one-hot give `closed_pending`.
* A 50-50 result pays 0.5 per share (`void` here), it is not a refund. It is only accepted as
  final: Gamma needs `umaResolutionStatus == "resolved"` with both prices 0.5 (a closed market
  whose last prices merely sit at 0.5 is still pending), the CLOB needs `is_50_50_outcome` with
  token prices 0.5/0.5 and no winner flag.
* `["0","0"]` and AMM-era prices off the 0.0001 grid (long decimals) are legacy data that can
  never become final: `ambiguous` (not settled; surfaced for an operator).
* A `market_resolved` without a usable winner is only evidence of close: `closed_pending`, and
  the REST sources decide the payout.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from typing import Any

from marketdata import states

OPEN = "open"
CLOSED_PENDING = "closed_pending"
RESOLVED = states.RESOLVED
VOID = states.VOID
AMBIGUOUS = states.AMBIGUOUS
VERDICT_STATES = frozenset({OPEN, CLOSED_PENDING, RESOLVED, VOID, AMBIGUOUS})

ONE = Decimal("1")
ZERO = Decimal("0")
HALF = Decimal("0.5")
WIN_THRESHOLD = Decimal("0.999")
LOSE_THRESHOLD = Decimal("0.001")
# The finest tick Polymarket's CLOB uses; CLOB-era prices are always on this grid.
FINEST_TICK_EXPONENT = -4

# Gamma encodes these arrays as strings holding JSON (polymarket.md §0.5).
GAMMA_JSON_STRING_FIELDS = ("outcomes", "outcomePrices", "clobTokenIds", "umaResolutionStatuses")


@dataclass(frozen=True)
class ResolutionVerdict:
    """What one source says about a market. `payouts` is filled for resolved (1 for the
    winner, 0 for the others) and void (0.5 each), empty otherwise."""

    state: str
    condition_id: str
    token_ids: tuple[str, ...] = ()
    winner_token_id: str | None = None
    winner_outcome: str | None = None
    payouts: dict[str, Decimal] = field(default_factory=dict)
    reason: str = ""

    @property
    def is_outcome(self) -> bool:
        """True for the states that create the market's one MarketResolution."""
        return self.state in (RESOLVED, VOID, AMBIGUOUS)


def json_list(value: Any) -> list[Any] | None:
    """Decode a Gamma JSON-in-string array ("[\\"Yes\\", \\"No\\"]"); real arrays (third-party
    mocks, the websocket's new_market) pass through. None when absent or not an array."""
    if value is None:
        return None
    if isinstance(value, list | tuple):
        return list(value)
    if isinstance(value, str):
        text = value.strip()
        if not text:
            return None
        try:
            decoded = json.loads(text)
        except ValueError:
            return None
        return decoded if isinstance(decoded, list) else None
    return None


def decimal_or_none(value: Any) -> Decimal | None:
    """A wire number as an exact Decimal: strings as written, JSON floats through str() (their
    shortest repr, e.g. 0.01 -> "0.01"), so no binary rounding error enters. None if unusable."""
    if value is None or isinstance(value, bool):
        return None
    try:
        result = Decimal(str(value).strip())
    except (InvalidOperation, ValueError):
        return None
    return result if result.is_finite() else None


def _prices(raw: Any) -> list[Decimal] | None:
    values = json_list(raw)
    if values is None:
        return None
    prices: list[Decimal] = []
    for value in values:
        price = decimal_or_none(value)
        if price is None or not ZERO <= price <= ONE:
            return None
        prices.append(price)
    return prices


def strict_winner_index(prices: Sequence[Decimal]) -> int | None:
    """The index of the one price ≥ 0.999 when every other is ≤ 0.001; otherwise None."""
    winner: int | None = None
    for index, price in enumerate(prices):
        if price >= WIN_THRESHOLD:
            if winner is not None:
                return None
            winner = index
        elif price > LOSE_THRESHOLD:
            return None
    return winner


def _off_grid(prices: Sequence[Decimal]) -> bool:
    """True when a price has more decimals than any CLOB tick allows (AMM-era data)."""
    return any(
        isinstance(exp := price.normalize().as_tuple().exponent, int) and exp < FINEST_TICK_EXPONENT
        for price in prices
    )


def _one_hot(tokens: Sequence[str], winner: int) -> dict[str, Decimal]:
    return {token: (ONE if index == winner else ZERO) for index, token in enumerate(tokens)}


def _binary_ids(tokens: Sequence[Any] | None) -> list[str] | None:
    if tokens is None or len(tokens) != 2:
        return None
    ids = [str(token) for token in tokens]
    if any(not token for token in ids) or ids[0] == ids[1]:
        return None
    return ids


# --- (a) websocket market_resolved ------------------------------------------------------------
def verdict_from_ws(message: Mapping[str, Any]) -> ResolutionVerdict:
    """Parse a `market_resolved` event (aliases accepted as in the official py-sdk:
    `asset_ids` / `token_ids` for `assets_ids`, `winning_token_id` for `winning_asset_id`)."""
    if message.get("event_type") != "market_resolved":
        raise ValueError(f"not a market_resolved event: {message.get('event_type')!r}")
    condition_id = str(message.get("market") or message.get("condition_id") or "")
    raw_ids = message.get("assets_ids") or message.get("asset_ids") or message.get("token_ids")
    token_ids = tuple(str(t) for t in (raw_ids or []) if t)
    winner = str(message.get("winning_asset_id") or message.get("winning_token_id") or "")
    outcome = message.get("winning_outcome") or None
    if not winner:
        return ResolutionVerdict(
            CLOSED_PENDING, condition_id, token_ids, reason="market_resolved without a winner"
        )
    if token_ids and winner not in token_ids:
        return ResolutionVerdict(
            CLOSED_PENDING,
            condition_id,
            token_ids,
            reason="market_resolved names a winner outside its assets_ids",
        )
    payouts = {token: (ONE if token == winner else ZERO) for token in token_ids} or {winner: ONE}
    return ResolutionVerdict(
        RESOLVED,
        condition_id,
        token_ids or (winner,),
        winner_token_id=winner,
        winner_outcome=str(outcome) if outcome is not None else None,
        payouts=payouts,
        reason="websocket market_resolved",
    )


# --- (b) CLOB market ----------------------------------------------------------------------------
def verdict_from_clob(market: Mapping[str, Any]) -> ResolutionVerdict:
    """Parse a CLOB `GET /markets/{condition_id}` object."""
    condition_id = str(market.get("condition_id") or "")
    tokens = [t for t in (market.get("tokens") or []) if isinstance(t, Mapping)]
    token_ids = tuple(str(t.get("token_id") or "") for t in tokens)
    if market.get("closed") is not True:
        return ResolutionVerdict(OPEN, condition_id, token_ids, reason="CLOB market not closed")
    ids = _binary_ids(token_ids)
    if ids is None:
        return ResolutionVerdict(
            AMBIGUOUS, condition_id, token_ids, reason="closed CLOB market is not binary"
        )
    winners = [index for index, token in enumerate(tokens) if token.get("winner") is True]
    if len(winners) == 1:
        index = winners[0]
        return ResolutionVerdict(
            RESOLVED,
            condition_id,
            tuple(ids),
            winner_token_id=ids[index],
            winner_outcome=str(tokens[index].get("outcome") or "") or None,
            payouts=_one_hot(ids, index),
            reason="CLOB closed with one winner flag",
        )
    if len(winners) > 1:
        return ResolutionVerdict(
            AMBIGUOUS, condition_id, tuple(ids), reason="CLOB flags more than one winner"
        )
    prices = [decimal_or_none(t.get("price")) for t in tokens]
    if market.get("is_50_50_outcome") is True and all(p == HALF for p in prices):
        return ResolutionVerdict(
            VOID,
            condition_id,
            tuple(ids),
            payouts={token: HALF for token in ids},
            reason="CLOB 50-50 outcome",
        )
    return ResolutionVerdict(
        CLOSED_PENDING, condition_id, tuple(ids), reason="CLOB closed without a winner flag"
    )


# --- (c) Gamma market ---------------------------------------------------------------------------
def verdict_from_gamma(market: Mapping[str, Any]) -> ResolutionVerdict:
    """Parse a Gamma market object (raw JSON-in-string fields or already decoded)."""
    condition_id = str(market.get("conditionId") or market.get("condition_id") or "")
    raw_tokens = json_list(market.get("clobTokenIds"))
    token_ids = tuple(str(t) for t in (raw_tokens or []))
    if market.get("closed") is not True:
        return ResolutionVerdict(OPEN, condition_id, token_ids, reason="Gamma market not closed")

    ids = _binary_ids(raw_tokens)
    outcomes = json_list(market.get("outcomes"))
    if ids is None or outcomes is None or len(outcomes) != 2 or outcomes[0] == outcomes[1]:
        return ResolutionVerdict(
            AMBIGUOUS, condition_id, token_ids, reason="closed Gamma market is not binary"
        )
    prices = _prices(market.get("outcomePrices"))
    if prices is None or len(prices) != 2:
        return ResolutionVerdict(
            CLOSED_PENDING, condition_id, tuple(ids), reason="closed, outcome prices unusable"
        )
    final = str(market.get("umaResolutionStatus") or "").lower() == "resolved"

    winner = strict_winner_index(prices)
    if winner is not None:
        return ResolutionVerdict(
            RESOLVED,
            condition_id,
            tuple(ids),
            winner_token_id=ids[winner],
            winner_outcome=str(outcomes[winner]),
            payouts=_one_hot(ids, winner),
            reason="Gamma closed with one-hot prices"
            + (" (UMA resolved)" if final else " (no UMA status)"),
        )
    if all(price == ZERO for price in prices):
        return ResolutionVerdict(
            AMBIGUOUS, condition_id, tuple(ids), reason="closed with outcome prices 0/0"
        )
    if all(price == HALF for price in prices):
        if final:
            return ResolutionVerdict(
                VOID,
                condition_id,
                tuple(ids),
                payouts={token: HALF for token in ids},
                reason="Gamma 50-50 resolution (UMA resolved)",
            )
        return ResolutionVerdict(
            CLOSED_PENDING, condition_id, tuple(ids), reason="closed at 0.5/0.5, UMA not resolved"
        )
    if _off_grid(prices):
        return ResolutionVerdict(
            AMBIGUOUS,
            condition_id,
            tuple(ids),
            reason="closed with legacy non-binary (AMM) outcome prices",
        )
    return ResolutionVerdict(
        CLOSED_PENDING,
        condition_id,
        tuple(ids),
        reason="closed, prices not final"
        + (" (UMA says resolved, prices not one-hot yet)" if final else ""),
    )
