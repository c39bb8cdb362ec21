"""Allowed market lifecycle changes, as data (docs/engine-rules.md §7). One table, one check.

    open ──► closed (halted, result pending) ──► resolved (winner) | void (50-50) | ambiguous
      └──────────────────────────────────────────►┘
    ambiguous ──► resolved | void   (an operator's manual resolution only; services enforce it)

`resolved` and `void` are final: settlement runs once on them, so nothing may leave them.
"""

from __future__ import annotations

from core.errors import DomainError

OPEN = "open"
CLOSED = "closed"
RESOLVED = "resolved"
VOID = "void"
AMBIGUOUS = "ambiguous"

MARKET_TRANSITIONS: dict[str, frozenset[str]] = {
    OPEN: frozenset({CLOSED, RESOLVED, VOID, AMBIGUOUS}),
    CLOSED: frozenset({RESOLVED, VOID, AMBIGUOUS}),
    AMBIGUOUS: frozenset({RESOLVED, VOID}),
    RESOLVED: frozenset(),
    VOID: frozenset(),
}
FINAL = frozenset(s for s, targets in MARKET_TRANSITIONS.items() if not targets)
# States a resolution report can put a market in (each creates the one MarketResolution row).
OUTCOME_STATES = frozenset({RESOLVED, VOID, AMBIGUOUS})
# No new orders in these states (closed included: trading is halted until the result is final).
HALTED = frozenset({CLOSED, RESOLVED, VOID, AMBIGUOUS})


class IllegalTransition(DomainError):
    code = "ILLEGAL_TRANSITION"
    status = 409
    default_message = "That status change is not allowed."


def can_transition(current: str, target: str) -> bool:
    return target in MARKET_TRANSITIONS.get(current, frozenset())


def ensure_transition(current: str, target: str) -> None:
    if not can_transition(current, target):
        raise IllegalTransition(f"market cannot go from {current} to {target}")
