"""Wallet services: users, accounts, the ledger and equity snapshots.

Locking rule for this module: every function that changes an Account's cached balances takes
the account row lock first (`account_lock`) inside a transaction, and every cash movement is
one LedgerEntry written in that same transaction (docs/engine-rules.md L2, C1). Functions
whose docstring says "caller holds the lock" must be called with an Account returned by
`account_lock`.
"""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from typing import Any

from django.conf import settings
from django.contrib.auth.hashers import make_password
from django.db import connection, transaction
from django.utils import timezone

from accounts.balances import cash_movement, equity_extremes
from accounts.models import Account, EquitySnapshot, LedgerEntry, Position, User, normalize_email
from core import errors
from core.db import create_or_get
from core.money import ZERO, cash
from core.sqlrows import model_from_row

# --- Users --------------------------------------------------------------------------------
USER_COLUMNS = (
    "id",
    "password",
    "last_login",
    "is_superuser",
    "email",
    "is_active",
    "is_staff",
    "date_joined",
)
_USER_SELECT = ", ".join(f'"{c}"' for c in USER_COLUMNS)
_USER_INSERT = (
    'INSERT INTO "accounts_user" ("password", "last_login", "is_superuser", "email", '
    '"is_active", "is_staff", "date_joined") VALUES (%s, NULL, %s, %s, %s, %s, %s) '
    'ON CONFLICT ("email") DO NOTHING'
)
# PostgreSQL: insert-or-read in ONE statement. The outer SELECT runs on the statement's
# snapshot, so it sees a row committed before the statement began (a known email) but not
# the CTE's own insert (a new one, returned by RETURNING): exactly one row either way. Only
# when a concurrent insert of the same email commits while this one waits on the unique index
# does it return nothing; a second SELECT (a new snapshot) then reads the winner's row.
_USER_UPSERT = (
    f"WITH ins AS ({_USER_INSERT} RETURNING {_USER_SELECT}) "
    f'SELECT {_USER_SELECT} FROM ins UNION ALL SELECT {_USER_SELECT} FROM "accounts_user" '
    'WHERE "email" = %s'
)
_USER_BY_EMAIL = f'SELECT {_USER_SELECT} FROM "accounts_user" WHERE "email" = %s'


def user_ensure(*, email: str) -> User:
    """The one user of a normalized email, created if needed. Race-safe and idempotent:
    INSERT … ON CONFLICT DO NOTHING and a read back, so a concurrent insert of the same email
    waits for the other transaction and yields its row — no savepoint, and the same
    statements whether or not the email existed (callers must not leak which).

    Fixed SQL, not the ORM: registration and sign-in requests are hot writes, and building
    the two ORM queries cost several times more CPU than running them (docs/benchmarks.md)."""
    normalized = normalize_email(email)
    joined = timezone.now()
    insert_params: list[Any] = [make_password(None), False, normalized, True, False, joined]
    with connection.cursor() as cursor:
        cursor.execute(_USER_UPSERT, [*insert_params, normalized])
        row = cursor.fetchone()
        if row is None:  # lost a race with a concurrent insert of the same email
            cursor.execute(_USER_BY_EMAIL, [normalized])
            row = cursor.fetchone()
    if row is None:  # the insert was refused by something other than the email's uniqueness
        raise AssertionError(f"could not create a user for {normalized!r}")
    return model_from_row(User, USER_COLUMNS, row)


# --- Accounts -----------------------------------------------------------------------------
def account_lock(*, account_id: Any) -> Account:
    """SELECT … FOR UPDATE the account row. Must run inside transaction.atomic(); when several
    accounts are involved, lock them in primary-key order (docs/engine-rules.md C2)."""
    return Account.objects.select_for_update().get(pk=account_id)


@transaction.atomic
def account_open(
    *,
    owner: User,
    tenant: Any | None,
    external_id: str | None,
    stage: str | None,
    starting_balance: Decimal,
    rules: dict[str, Any] | None = None,
    metadata: dict[str, Any] | None = None,
) -> Account:
    """Create a wallet funded by an INITIAL_DEPOSIT ledger entry, with its first equity
    snapshot. Raises IntegrityError if (tenant, external_id) or the owner's personal account
    already exists — callers decide what a duplicate means."""
    now = timezone.now()
    account = Account.objects.create(
        owner=owner,
        tenant=tenant,
        external_id=external_id,
        stage=stage,
        starting_balance=starting_balance,
        high_water_mark=starting_balance,
        rules=rules or {},
        metadata=metadata or {},
        created_at=now,
    )
    ledger_post(account=account, kind=LedgerEntry.Kind.INITIAL_DEPOSIT, amount=starting_balance)
    equity_snapshot_record(account=account, positions_value=ZERO, at=now)
    return account


def personal_account_ensure(*, user: User) -> Account:
    """The user's one personal account (no tenant), opened with
    PERSONAL_ACCOUNT_DEFAULT_BALANCE if they have none. Idempotent and race-safe: the
    unique "one personal account per owner" constraint decides a concurrent double open,
    and the loser reads the winner's row."""

    def existing() -> Account | None:
        return Account.objects.filter(owner=user, tenant__isnull=True).first()

    found = existing()
    if found is not None:
        return found
    account, _ = create_or_get(
        lambda: account_open(
            owner=user,
            tenant=None,
            external_id=None,
            stage=None,
            starting_balance=Decimal(settings.PERSONAL_ACCOUNT_DEFAULT_BALANCE),
        ),
        existing,
    )
    return account


def ledger_post(
    *,
    account: Account,
    kind: str,
    amount: Decimal,
    order_id: Any = None,
    fill_id: Any = None,
    memo: str = "",
    save_account: bool = True,
) -> LedgerEntry:
    """Append one signed cash movement and update the cached cash in the same transaction.
    Caller holds the lock. Refuses to take available cash below zero (docs/engine-rules.md
    L3); the DB CHECK constraints are the backstop. `save_account=False`: only
    `account.cash` is updated in memory and the caller writes it in its own account UPDATE,
    in this transaction."""
    amount, new_cash = cash_movement(account.cash, account.reserved_cash, amount)
    entry = LedgerEntry.objects.create(
        account=account,
        epoch=account.epoch,
        kind=kind,
        amount=amount,
        balance_after=new_cash,
        order_id=order_id,
        fill_id=fill_id,
        memo=memo,
    )
    account.cash = new_cash
    if save_account:
        Account.objects.filter(pk=account.pk).update(cash=new_cash, updated_at=timezone.now())
    return entry


def equity_snapshot_record(
    *,
    account: Account,
    positions_value: Decimal,
    at: dt.datetime | None = None,
    save_account: bool = True,
) -> EquitySnapshot:
    """Measure equity now and fold it into the epoch's high-water mark and max drawdown.
    Caller holds the lock (or has just created the account). `save_account=False`: the new
    high-water mark and drawdown are set on `account` only, for the caller's own UPDATE in
    this transaction."""
    snapshot, updates = _equity_measure(account=account, positions_value=positions_value, at=at)
    if updates and save_account:
        Account.objects.filter(pk=account.pk).update(**updates)
    snapshot.save(force_insert=True)
    return snapshot


def _equity_measure(
    *, account: Account, positions_value: Decimal, at: dt.datetime | None
) -> tuple[EquitySnapshot, dict[str, Any]]:
    at = at or timezone.now()
    equity = account.cash + positions_value
    extremes = equity_extremes(
        account.high_water_mark, account.max_drawdown, account.max_drawdown_pct, equity
    )
    updates: dict[str, Any] = {
        name: value
        for name, value in zip(
            ("high_water_mark", "max_drawdown", "max_drawdown_pct"), extremes, strict=True
        )
        if getattr(account, name) != value
    }
    for field, value in updates.items():
        setattr(account, field, value)
    snapshot = EquitySnapshot(
        account=account,
        epoch=account.epoch,
        at=at,
        equity=equity,
        cash=account.cash,
        positions_value=positions_value,
    )
    return snapshot, updates


@transaction.atomic
def account_update(
    *,
    account: Account,
    rules: dict[str, Any] | None = None,
    metadata: dict[str, Any] | None = None,
) -> Account:
    """Replace rules and/or metadata whole. Locks the account; closed accounts refuse."""
    locked = account_lock(account_id=account.pk)
    if locked.is_closed:
        raise errors.AccountClosed()
    fields = ["updated_at"]
    if rules is not None:
        locked.rules = rules
        fields.append("rules")
    if metadata is not None:
        locked.metadata = metadata
        fields.append("metadata")
    locked.save(update_fields=fields)
    return locked


def account_close_wallet(*, account: Account, equity: Decimal) -> Account:
    """Freeze the wallet: status closed, closed_at, equity at close. Caller holds the lock and
    has cancelled open orders (no reservations may remain)."""
    if account.reserved_cash != ZERO:
        raise AssertionError("close with live reservations: cancel orders first")
    account.status = Account.Status.CLOSED
    account.closed_at = timezone.now()
    account.closed_equity = cash(equity)
    account.save(update_fields=["status", "closed_at", "closed_equity", "updated_at"])
    return account


def account_reset_wallet(*, account: Account) -> Account:
    """Start a new epoch: positions of the old epoch are closed as `closed_by_reset` (no cash
    effect), cash returns to the starting balance through a RESET ledger entry, and the
    epoch's HWM, drawdown, P&L, fees and trading days restart. Earlier fills and ledger
    entries stay, tagged with their epoch. Caller holds the lock and has cancelled orders."""
    if account.reserved_cash != ZERO:
        raise AssertionError("reset with live reservations: cancel orders first")
    now = timezone.now()
    Position.objects.filter(
        account=account, epoch=account.epoch, status=Position.Status.OPEN
    ).update(status=Position.Status.CLOSED_BY_RESET, reserved_size=ZERO, updated_at=now)
    account.epoch += 1
    account.realized_pnl = ZERO
    account.fees_paid = ZERO
    account.high_water_mark = account.starting_balance
    account.max_drawdown = ZERO
    account.max_drawdown_pct = ZERO
    account.trading_days = 0
    account.last_trading_day = None
    account.last_reset_at = now
    account.save(
        update_fields=[
            "epoch",
            "realized_pnl",
            "fees_paid",
            "high_water_mark",
            "max_drawdown",
            "max_drawdown_pct",
            "trading_days",
            "last_trading_day",
            "last_reset_at",
            "updated_at",
        ]
    )
    ledger_post(
        account=account,
        kind=LedgerEntry.Kind.RESET,
        amount=account.starting_balance - account.cash,
        memo=f"reset to epoch {account.epoch}",
    )
    equity_snapshot_record(account=account, positions_value=ZERO, at=now)
    return account
