"""Reads for the trader pages: the trader's accounts, open orders with their market, the
newest-first trade history, the equity chart and the season leaderboard. Read-only, no locks.
Money stays Decimal; formatting happens in the templates (web/templatetags/trader_format.py).
"""

from __future__ import annotations

import datetime as dt
import threading
import time
import uuid
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from django.db.models import DecimalField, OuterRef, Subquery
from django.utils import timezone
from django.utils.crypto import salted_hmac

from accounts.models import Account, EquitySnapshot, User
from core import errors
from core.money import ZERO, pct
from core.pagination import decode_cursor, encode_cursor
from marketdata.models import Token
from trading.models import Fill, Order
from trading.selectors import EQUITY_MAX_POINTS, equity_series

HISTORY_PAGE_SIZE = 25
OPEN_ORDERS_SHOWN = 200


# --- Accounts -----------------------------------------------------------------------------
def trader_accounts(*, user: User) -> list[Account]:
    """The user's accounts for the switcher: personal first, then active before closed, then
    by firm and age. Tenants joined (one query)."""
    accounts = list(Account.objects.filter(owner_id=user.pk).select_related("tenant"))
    return sorted(
        accounts,
        key=lambda a: (
            a.tenant_id is not None,
            a.is_closed,
            a.tenant.name if a.tenant is not None else "",
            a.created_at,
        ),
    )


def account_pick(*, accounts: list[Account], requested: str | None) -> Account | None:
    """The account named by ?account=<id> among the trader's own, or the first one when no id
    was given. None when the id is malformed or not theirs (the caller answers 404, the same
    for both so nothing tells another trader's id from a made-up one)."""
    if not requested:
        return accounts[0] if accounts else None
    try:
        wanted = uuid.UUID(requested)
    except ValueError:
        return None
    return next((a for a in accounts if a.pk == wanted), None)


# --- Orders ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class OpenOrderRow:
    order: Order
    question: str
    outcome: str

    @property
    def remaining(self) -> Decimal | None:
        size = self.order.size
        return None if size is None else size - self.order.filled_size


def open_orders(*, account: Account) -> tuple[list[OpenOrderRow], int]:
    """The account's live orders, newest first (at most OPEN_ORDERS_SHOWN), each with its
    market question and outcome, and how many live orders there are in all. Three queries."""
    live = Order.objects.filter(account=account, status=Order.Status.LIVE)
    total = live.count()
    orders = list(live.order_by("-created_at", "-id")[:OPEN_ORDERS_SHOWN])
    tokens = {
        t.token_id: t
        for t in Token.objects.filter(token_id__in={o.token_id for o in orders}).select_related(
            "market"
        )
    }
    rows = []
    for order in orders:
        token = tokens.get(order.token_id)
        rows.append(
            OpenOrderRow(
                order=order,
                question=token.market.question if token is not None else order.market_id,
                outcome=token.outcome if token is not None else "",
            )
        )
    return rows, total


# --- Trade and settlement history -------------------------------------------------------------
@dataclass(frozen=True)
class HistoryPage:
    items: list[Fill]
    older_cursor: str | None  # None: this page reaches the account's first fill


def _history_scope(account: Account) -> str:
    return f"ui-history:{account.pk}"


def fill_history_page(*, account: Account, before: str | None, limit: int) -> HistoryPage:
    """One page of the account's fills and settlements, newest first, keyset on the
    per-account `seq` (the order fills were committed in; the same key the partner and trader
    trades feeds page on, which run oldest first for pollers). `before` is an opaque cursor
    from a previous page, signed and bound to this account (InvalidCursor otherwise). New
    fills arriving between pages never shift or repeat rows: the key only goes down."""
    qs = Fill.objects.filter(account=account)
    if before:
        values = decode_cursor(_history_scope(account), before)
        if len(values) != 1 or not isinstance(values[0], int):
            raise errors.InvalidCursor()
        qs = qs.filter(seq__lt=values[0])
    rows = list(qs.order_by("-seq")[: limit + 1])
    has_more = len(rows) > limit
    rows = rows[:limit]
    cursor = encode_cursor(_history_scope(account), [rows[-1].seq]) if has_more else None
    return HistoryPage(items=rows, older_cursor=cursor)


# --- Equity chart ---------------------------------------------------------------------------
def equity_chart(
    *, account: Account, current_equity: Decimal | None = None, now: dt.datetime | None = None
) -> dict[str, Any]:
    """Equity of the current epoch since it began, for uPlot: {"t": [unix seconds], "v":
    [decimal strings]} with the close of each interval, ending with `current_equity` (the
    envelope's, at live marks) at `now` when that falls in a later interval than the last
    snapshot. The interval grows with the span (minutes up to two days, hours up to 150
    days, then days) so the chart never carries more than EQUITY_MAX_POINTS points. Money
    leaves as strings; the browser parses them only to draw."""
    now = now or timezone.now()
    start = account.last_reset_at or account.created_at
    span = (now - start).total_seconds()
    interval = 60 if span <= 2 * 86400 else 3600 if span <= 150 * 86400 else 86400
    points = equity_series(
        account=account,
        epoch=account.epoch,
        start=start,
        end=now + dt.timedelta(seconds=1),
        interval_s=interval,
    )
    times = [int(p["t"].timestamp()) for p in points]
    values = [str(p["close"]) for p in points]
    now_bucket = int(now.timestamp()) // interval * interval
    if current_equity is not None and (not times or times[-1] < now_bucket):
        times.append(int(now.timestamp()))
        values.append(str(current_equity))
    return {"t": times[-EQUITY_MAX_POINTS:], "v": values[-EQUITY_MAX_POINTS:], "interval": interval}


# --- Leaderboard ----------------------------------------------------------------------------
LEADERBOARD_SHOWN = 100


@dataclass(frozen=True)
class LeaderRow:
    rank: int
    account_id: uuid.UUID
    owner_id: int
    alias: str
    equity: Decimal
    baseline: Decimal
    pnl: Decimal
    return_pct: Decimal


@dataclass(frozen=True)
class Leaderboard:
    season_start: dt.datetime
    season_end: dt.datetime
    rows: list[LeaderRow]  # the top LEADERBOARD_SHOWN
    me: LeaderRow | None  # the viewer's own row, wherever it ranks
    total: int


def season_bounds(now: dt.datetime) -> tuple[dt.datetime, dt.datetime]:
    """The season is the calendar month in UTC: [first of this month, first of next)."""
    now = now.astimezone(dt.UTC)
    start = now.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    end = (start + dt.timedelta(days=32)).replace(day=1)
    return start, end


def leader_alias(account_id: uuid.UUID) -> str:
    """A stable public name for an account: the leaderboard is public and never shows an
    email. Keyed with SECRET_KEY, so it cannot be turned back into the account id."""
    digest = salted_hmac("polysim-leaderboard-alias", str(account_id)).hexdigest()
    return f"Trader {digest[:6].upper()}"


_Scored = tuple[Decimal, dt.datetime, uuid.UUID, int, Decimal, Decimal]
# The ranking is the same for every viewer; measured at ~0.5 s for 10k accounts on this
# machine (one query of 20k index seeks plus the Decimal pass), so each process keeps it this
# long. Equity is only measured once a minute anyway.
LEADERBOARD_CACHE_SECONDS = 30.0
_ranking_cache: dict[dt.datetime, tuple[float, list[_Scored]]] = {}
_ranking_lock = threading.Lock()


def leaderboard_cache_clear() -> None:
    with _ranking_lock:
        _ranking_cache.clear()


def _season_scores(start: dt.datetime) -> list[_Scored]:
    """(pnl, created_at, account id, owner id, equity, baseline) of every active personal
    account, best first. One query; see `leaderboard` for the rule."""
    snapshots = EquitySnapshot.objects.filter(
        account_id=OuterRef("pk"), epoch=OuterRef("epoch")
    ).order_by("-at", "-id")
    money: DecimalField[Decimal, Decimal] = DecimalField(max_digits=20, decimal_places=6)
    rows = (
        Account.objects.filter(tenant__isnull=True, status=Account.Status.ACTIVE)
        .annotate(
            equity_now=Subquery(snapshots.values("equity")[:1], output_field=money),
            equity_start=Subquery(
                snapshots.filter(at__lte=start).values("equity")[:1], output_field=money
            ),
        )
        .values_list(
            "id", "owner_id", "created_at", "starting_balance", "cash", "equity_now", "equity_start"
        )
    )
    scored: list[_Scored] = []
    for account_id, owner_id, created_at, starting, cash_, equity_now, equity_start in rows:
        equity = equity_now if equity_now is not None else cash_
        baseline = equity_start if equity_start is not None else starting
        scored.append((equity - baseline, created_at, account_id, owner_id, equity, baseline))
    scored.sort(key=lambda r: (-r[0], r[1], str(r[2])))
    return scored


def _cached_scores(start: dt.datetime) -> list[_Scored]:
    clock = time.monotonic()
    with _ranking_lock:
        hit = _ranking_cache.get(start)
        if hit is not None and hit[0] > clock:
            return hit[1]
    scored = _season_scores(start)
    with _ranking_lock:
        _ranking_cache.clear()  # only the current season is ever asked for
        _ranking_cache[start] = (clock + LEADERBOARD_CACHE_SECONDS, scored)
    return scored


def leaderboard(*, viewer_id: int | None = None, now: dt.datetime | None = None) -> Leaderboard:
    """Personal accounts ranked by this season's P&L. Tenant accounts never appear and are
    never counted (filtered in SQL, not after).

    Season P&L = equity now − equity at the season's start, within the current epoch:
      * equity now: the account's latest equity snapshot (taken at opening, at every fill and
        settlement, and each minute while positions are held, so at most a minute old);
      * equity at the season's start: the latest snapshot of the current epoch at or before
        the first of the month (00:00 UTC); for an account opened — or reset — during the
        season, its starting balance (a reset starts the season over; personal accounts
        cannot be reset today). No deposits exist beyond the opening one.
    Active accounts only; ties share a rank (1, 2, 2, 4), ordered by the earlier account.

    One query with two correlated subqueries per account, each an index seek on
    (account, epoch, at); ranking in Python with Decimal. Without `now` (live pages) the
    ranking is reused for LEADERBOARD_CACHE_SECONDS per process; with it (tests, reports) it
    is always computed.
    """
    start, end = season_bounds(now or timezone.now())
    scored = _season_scores(start) if now is not None else _cached_scores(start)
    ranked: list[LeaderRow] = []
    me: LeaderRow | None = None
    previous: Decimal | None = None
    rank = 0
    for position, (pnl, _created, account_id, owner_id, equity, baseline) in enumerate(
        scored, start=1
    ):
        if pnl != previous:
            rank, previous = position, pnl
        if position > LEADERBOARD_SHOWN and owner_id != viewer_id:
            continue  # only the top rows and the viewer's are built
        row = LeaderRow(
            rank=rank,
            account_id=account_id,
            owner_id=owner_id,
            alias=leader_alias(account_id),
            equity=equity,
            baseline=baseline,
            pnl=pnl,
            return_pct=pct(pnl, baseline) if baseline > ZERO else ZERO,
        )
        if position <= LEADERBOARD_SHOWN:
            ranked.append(row)
        if viewer_id is not None and owner_id == viewer_id:
            me = row
    return Leaderboard(season_start=start, season_end=end, rows=ranked, me=me, total=len(scored))
