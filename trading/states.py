"""Allowed order status changes, as data (docs/engine-rules.md §2). One table, one check."""

from __future__ import annotations

from core.errors import DomainError

LIVE = "live"
MATCHED = "matched"
CANCELED = "canceled"
EXPIRED = "expired"
REJECTED = "rejected"

ORDER_TRANSITIONS: dict[str, frozenset[str]] = {
    # An order enters as `live` (rests or is being filled at entry) or `rejected`.
    LIVE: frozenset({LIVE, MATCHED, CANCELED, EXPIRED}),
    MATCHED: frozenset(),
    CANCELED: frozenset(),
    EXPIRED: frozenset(),
    REJECTED: frozenset(),
}
TERMINAL = frozenset(s for s, targets in ORDER_TRANSITIONS.items() if not targets)


class IllegalTransition(DomainError):
    code = "ILLEGAL_TRANSITION"
    status = 409
    default_message = "That status change is not allowed."


def ensure_transition(current: str, target: str) -> None:
    if target not in ORDER_TRANSITIONS.get(current, frozenset()):
        raise IllegalTransition(f"order cannot go from {current} to {target}")
