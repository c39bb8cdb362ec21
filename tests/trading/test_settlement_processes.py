"""Settlement races between separate OS processes on PostgreSQL (docs/engine-rules.md §7:
"Settlement runs once per position, however many sources report the resolution").

Threads share one interpreter; these run two `python` processes (tests/trading/race_worker.py)
against the same committed test database, released together by a go file once both are
connected: each position must be settled exactly once — one settlement fill and one
SETTLEMENT ledger entry per position, the right cash — and the audit must stay clean."""

from __future__ import annotations

import json
import subprocess
import sys
from decimal import Decimal as D
from pathlib import Path
from typing import Any

import pytest

from accounts.models import Account, LedgerEntry, Position
from marketdata.models import MarketResolution
from tests.runtime import child_env
from tests.trading.conftest import audit_clean, make_market, open_account, publish_book
from trading.models import Fill
from trading.services import order_place

pytestmark = [pytest.mark.django_db(transaction=True)]

ROOT = Path(__file__).resolve().parents[2]
N_ACCOUNTS = 30


def _worker_env() -> dict[str, str]:
    return child_env(DJANGO_SETTINGS_MODULE="config.settings_test", PYTHONPATH=str(ROOT))


def _race(argvs: list[list[str]], go_file: Path) -> list[dict[str, object]]:
    """Start one worker per argv, wait until all are connected, release them together."""
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "tests.trading.race_worker", *argv, str(go_file)],
            cwd=ROOT,
            env=_worker_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for argv in argvs
    ]
    try:
        for proc in procs:
            assert proc.stdout is not None
            line = proc.stdout.readline().strip()
            assert line == "ready", (line, proc.stderr.read() if proc.stderr else "")
        go_file.touch()
        results = []
        for proc in procs:
            out, err = proc.communicate(timeout=120)
            assert proc.returncode == 0, err
            results.append(json.loads(out.strip().splitlines()[-1]))
        return results
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()


def _holders() -> tuple[Any, Any, Any, list[Account]]:
    """A market and N accounts each holding YES (100 at 0.40) and, every other one, NO."""
    market, yes, no = make_market()
    publish_book(yes.token_id, asks=[("0.40", "100000")], bids=[("0.38", "100000")])
    publish_book(no.token_id, asks=[("0.60", "100000")], bids=[("0.58", "100000")])
    accounts = []
    for i in range(N_ACCOUNTS):
        account = open_account("1000")
        order_place(account_id=account.pk, token_id=yes.token_id, side="BUY", type="limit",
                    price="0.40", size="100")  # fmt: skip
        if i % 2 == 0:
            order_place(account_id=account.pk, token_id=no.token_id, side="BUY", type="limit",
                        price="0.60", size="50")  # fmt: skip
        accounts.append(account)
    return market, yes, no, accounts


def _assert_settled_once(accounts: list[Account], yes_token: str) -> None:
    positions = list(Position.objects.filter(account__in=accounts))
    assert len(positions) == N_ACCOUNTS + N_ACCOUNTS // 2
    assert {p.status for p in positions} == {"settled"}
    for position in positions:
        fills = Fill.objects.filter(
            account_id=position.account_id, token_id=position.token_id, kind="settlement"
        )
        assert fills.count() == 1, position
        entries = LedgerEntry.objects.filter(fill_id=fills.get().pk, kind="SETTLEMENT")
        assert entries.count() == 1
        assert entries.get().amount == (D("100") if position.token_id == yes_token else D("0"))
    assert LedgerEntry.objects.filter(kind="SETTLEMENT").count() == len(positions)
    for i, account in enumerate(accounts):
        # 1000 − 40 (YES) − 30 (NO, even accounts) + 100 (YES wins)
        want = D("1030") if i % 2 == 0 else D("1060")
        assert Account.objects.get(pk=account.pk).cash == want
    audit_clean()


def test_two_processes_settle_the_same_resolution_once(tmp_path: Path) -> None:
    market, yes, no, accounts = _holders()
    # The resolution row as marketdata records it, written directly so that no settlement
    # runs in this process (market_apply_verdict's signal would settle here, eagerly).
    resolution = MarketResolution.objects.create(
        market=market,
        state=MarketResolution.State.RESOLVED,
        winning_token=yes,
        winning_outcome=yes.outcome,
        payouts={yes.token_id: "1", no.token_id: "0"},
        source=MarketResolution.Source.CLOB,
    )
    market.status = "resolved"
    market.save(update_fields=["status"])

    results = _race([["settle", str(resolution.pk)]] * 2, tmp_path / "go")

    n_positions = N_ACCOUNTS + N_ACCOUNTS // 2
    assert sum(int(r["positions"]) for r in results) == n_positions, results  # type: ignore[call-overload]
    assert sum(D(str(r["paid"])) for r in results) == 100 * N_ACCOUNTS
    assert sorted(bool(r["consumed"]) for r in results) == [False, True]  # marked once
    _assert_settled_once(accounts, yes.token_id)


def test_two_sources_report_the_resolution_at_once(tmp_path: Path) -> None:
    market, yes, _no, accounts = _holders()
    argvs = [
        ["report", str(market.pk), source, yes.token_id]
        for source in (MarketResolution.Source.WS, MarketResolution.Source.CLOB)
    ]

    results = _race(argvs, tmp_path / "go")

    assert sorted(bool(r["recorded"]) for r in results) == [False, True], results
    resolution = MarketResolution.objects.get(market=market)  # exactly one
    assert resolution.consumed_at is not None and resolution.winning_token_id == yes.pk
    _assert_settled_once(accounts, yes.token_id)
