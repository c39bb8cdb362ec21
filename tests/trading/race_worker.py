"""A separate OS process for the settlement race tests (test_settlement_processes.py): set up
Django against the test database named in DATABASE_URL, say `ready`, wait for the go file,
then do one thing and print its result as JSON.

    python -m tests.trading.race_worker settle <resolution_id> <go_file>
    python -m tests.trading.race_worker report <market_pk> <source> <winner_token_id> <go_file>

`settle` calls trading's market_settle; `report` is one resolution source (websocket, CLOB,
Gamma…) reporting the market resolved through marketdata's market_apply_verdict — whose
`resolution_recorded` signal settles eagerly in the process that recorded it — followed by
the `settle-pending` sweep, as a beat worker would run it at the same moment.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path


def _wait_for(go_file: Path) -> None:
    deadline = time.monotonic() + 60
    while not go_file.exists():
        if time.monotonic() > deadline:
            raise SystemExit("never told to go")
        time.sleep(0.001)


def main(argv: list[str]) -> dict[str, object]:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings_test")
    import django

    django.setup()
    from django.db import connection

    connection.ensure_connection()
    mode, *args = argv
    print("ready", flush=True)
    _wait_for(Path(args[-1]))
    if mode == "settle":
        from trading.services import market_settle

        result = market_settle(resolution_id=int(args[0]))
        return {
            "positions": result.positions,
            "paid": str(result.paid),
            "consumed": result.consumed,
        }
    if mode == "report":
        from marketdata import resolution as rs
        from marketdata.models import Market
        from marketdata.services import market_apply_verdict
        from trading.services import markets_settle_pending

        market = Market.objects.get(pk=int(args[0]))
        tokens = tuple(market.tokens.order_by("index").values_list("token_id", flat=True))
        verdict = rs.ResolutionVerdict(rs.RESOLVED, market.condition_id, tokens, args[2])
        recorded = market_apply_verdict(market=market, verdict=verdict, source=args[1])
        swept = markets_settle_pending()
        return {"recorded": recorded is not None, "swept": swept}
    raise SystemExit(f"unknown mode {mode!r}")


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1:])), flush=True)
