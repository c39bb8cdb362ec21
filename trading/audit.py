"""The ledger audit (docs/engine-rules.md §5): recompute every invariant from the rows and name
each violation. Read-only; run by `manage.py ledger audit` and by the tests after every
money-moving scenario. Meant to be run on a quiet database or accepted as a snapshot: it
takes no locks, so a fill committing mid-audit can produce a transient false positive.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from django.db.models import Sum

from accounts.models import Account, LedgerEntry, Position
from core.money import ZERO
from trading.models import Fill, Order, Side


@dataclass(frozen=True)
class Violation:
    account_id: Any
    rule: str
    detail: str

    def __str__(self) -> str:
        return f"account {self.account_id}: {self.rule}: {self.detail}"


def ledger_audit(*, account_id: Any = None) -> list[Violation]:
    """Every invariant violation, for one account or all of them (empty list = clean)."""
    accounts = Account.objects.order_by("pk")
    if account_id is not None:
        accounts = accounts.filter(pk=account_id)
    ids = list(accounts.values_list("pk", flat=True))
    scope: dict[str, Any] = {"account_id__in": ids}

    ledger = dict(
        LedgerEntry.objects.filter(**scope)
        .values("account_id")
        .annotate(total=Sum("amount"))
        .values_list("account_id", "total")
    )
    reserved = dict(
        Order.objects.filter(status=Order.Status.LIVE, **scope)
        .values("account_id")
        .annotate(total=Sum("reserved_cash"))
        .values_list("account_id", "total")
    )
    reserved_shares: dict[tuple[Any, str, int], Decimal] = defaultdict(lambda: ZERO)
    for acc, token, epoch, total in (
        Order.objects.filter(status=Order.Status.LIVE, side=Side.SELL, **scope)
        .values("account_id", "token_id", "epoch")
        .annotate(total=Sum("reserved_shares"))
        .values_list("account_id", "token_id", "epoch", "total")
    ):
        reserved_shares[(acc, token, epoch)] = total
    filled: dict[tuple[Any, str, int], Decimal] = defaultdict(lambda: ZERO)
    for acc, token, epoch, side, total in (
        Fill.objects.filter(kind=Fill.Kind.FILL, **scope)
        .values("account_id", "token_id", "epoch", "side")
        .annotate(total=Sum("size"))
        .values_list("account_id", "token_id", "epoch", "side", "total")
    ):
        filled[(acc, token, epoch)] += total if side == Side.BUY else -total
    seqs: dict[Any, list[int]] = defaultdict(list)
    for acc, seq in (
        Fill.objects.filter(**scope).order_by("account_id", "seq").values_list("account_id", "seq")
    ):
        seqs[acc].append(seq)

    out: list[Violation] = []
    for account in accounts:
        a = account.pk
        total = ledger.get(a) or ZERO
        if account.cash != total:
            out.append(Violation(a, "cash != sum(ledger)", f"cash {account.cash}, ledger {total}"))
        live = reserved.get(a) or ZERO
        if account.reserved_cash != live:
            out.append(
                Violation(
                    a,
                    "reserved_cash != sum(live orders' reserved_cash)",
                    f"reserved_cash {account.reserved_cash}, live orders {live}",
                )
            )
        if account.reserved_cash < 0 or account.cash - account.reserved_cash < 0:
            out.append(
                Violation(
                    a,
                    "negative available cash",
                    f"cash {account.cash}, reserved {account.reserved_cash}",
                )
            )
        got = seqs.get(a, [])
        if got != list(range(1, len(got) + 1)) or len(got) != account.last_fill_seq:
            out.append(
                Violation(
                    a,
                    "fill seq not gap-free",
                    f"{len(got)} fills, seqs {got[:3]}..{got[-3:]}, "
                    f"last_fill_seq {account.last_fill_seq}",
                )
            )
    seen: set[tuple[Any, str, int]] = set()
    for p in Position.objects.filter(**scope).order_by("account_id", "token_id", "epoch"):
        key = (p.account_id, p.token_id, p.epoch)
        seen.add(key)
        if p.status != Position.Status.OPEN:
            continue
        want_reserved = reserved_shares.get(key, ZERO)
        if p.reserved_size != want_reserved:
            out.append(
                Violation(
                    p.account_id,
                    "position reserved != sum(live SELL reserved_shares)",
                    f"{p.token_id} epoch {p.epoch}: {p.reserved_size} vs {want_reserved}",
                )
            )
        if p.size != filled.get(key, ZERO):
            out.append(
                Violation(
                    p.account_id,
                    "position size != sum(fills)",
                    f"{p.token_id} epoch {p.epoch}: {p.size} vs {filled.get(key, ZERO)}",
                )
            )
        if p.reserved_size < 0 or p.size - p.reserved_size < 0:
            out.append(
                Violation(
                    p.account_id,
                    "negative available shares",
                    f"{p.token_id} epoch {p.epoch}: size {p.size}, reserved {p.reserved_size}",
                )
            )
    for key, total in filled.items():
        if key not in seen and total != 0:
            out.append(
                Violation(key[0], "fills without a position", f"{key[1]} epoch {key[2]}: {total}")
            )
    for key, total in reserved_shares.items():
        if key not in seen and total != 0:
            out.append(
                Violation(key[0], "live SELL without a position", f"{key[1]} epoch {key[2]}")
            )
    return out
