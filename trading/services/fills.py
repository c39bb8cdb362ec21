"""Appending fills to an account's feed: the one place that numbers them.

The partner and trader trades feeds page by the per-account `seq`; pollers rely on it being
gap-free, in commit order, and on `filled_at` never going backwards along it. Caller holds
the account row lock (so numbering is serialised per account)."""

from __future__ import annotations

from collections.abc import Sequence

from accounts.models import Account
from trading.models import Fill


def fills_append(*, account: Account, fills: Sequence[Fill]) -> None:
    """Number `fills` after the account's last one, clamp their `filled_at` to be no earlier
    than that last fill's (web hosts' clocks can disagree by a little), insert them, and
    advance `account.last_fill_seq` in memory — the caller persists it with its own account
    update, in the same transaction. Caller holds the account row lock."""
    if not fills:
        return
    previous = None
    if account.last_fill_seq:
        previous = (
            Fill.objects.filter(account=account, seq=account.last_fill_seq)
            .values_list("filled_at", flat=True)
            .first()
        )
    for n, fill in enumerate(fills, start=1):
        fill.seq = account.last_fill_seq + n
        if previous is not None and fill.filled_at < previous:
            fill.filled_at = previous
    Fill.objects.bulk_create(fills)
    account.last_fill_seq += len(fills)
