"""The whole trader journey of issue #5 in headless Chromium, against the app on loopback fed
by the fake Polymarket through the real ingester:

partner registers a trader and opens a challenge account over HTTP → the login link from the
email → confirm → the portfolio shows the firm's account → a limit order rests and shows under
open orders → cancel it from the portfolio → a market order fills and the position and trade
show → the leaderboard shows the trader's personal account and never the firm's → a bad order
shows the right sentence. Screenshots of each page go to artifacts/journey-*.png.
"""

from __future__ import annotations

import re
from decimal import Decimal

import httpx
from django.core import mail
from playwright.sync_api import expect

from accounts.models import Account
from accounts.services.wallets import personal_account_ensure
from marketdata.models import Market
from partners.services import apikey_create
from tests.factories import TenantFactory
from trading.models import Order
from web.trader.selectors import leaderboard_cache_clear

LINK_RE = re.compile(r"https?://[^\s\"'<>]+/login/t/[A-Za-z0-9_-]+")


def _partner_onboards_a_trader(base_url: str) -> tuple[int, str, str]:
    """What a prop firm's backend does, over real HTTP: returns (user id, account id, link)."""
    tenant = TenantFactory(name="Acme Prop", default_landing_url="/app/")
    key = apikey_create(tenant=tenant, name="e2e").raw_key
    with httpx.Client(base_url=f"{base_url}/v1/partner", headers={"X-API-Key": key}) as api:
        user = api.post("/users", json={"external_id": "cust-7", "email": "journey@example.com"})
        assert user.status_code == 201, user.text
        user_id = user.json()["user_id"]
        account = api.post(
            "/accounts",
            json={
                "user_id": user_id,
                "external_id": "chal-7",
                "stage": "challenge",
                "starting_balance": "5000.00",
            },
        )
        assert account.status_code == 201, account.text
        sent = api.post(f"/users/{user_id}/login-link", json={})
        assert sent.status_code == 202, sent.text
    # The app sent the email (tasks run eagerly without a broker); the link is only in it.
    bodies = [m.body for m in mail.outbox if "journey@example.com" in m.to]
    assert bodies, "no login email"
    link = LINK_RE.search(bodies[-1])
    assert link, bodies[-1]
    path = link.group(0).split("/login/t/", 1)[1]
    return user_id, account.json()["account_id"], f"/login/t/{path}"


def test_partner_to_portfolio_orders_cancel_fill_leaderboard(page, app_server, feed, shot):
    user_id, account_id, link = _partner_onboards_a_trader(app_server.url)
    firm_account = Account.objects.get(pk=account_id)

    # Sign in through the emailed link: the confirmation page, then the portfolio.
    page.goto(link)
    expect(page.get_by_role("heading")).to_contain_text("journey@example.com")
    shot(page, "journey-1-confirm")
    page.get_by_role("button", name="Sign in").click()
    expect(page).to_have_url(re.compile(r"/portfolio/"))
    expect(page.get_by_test_id("managed-by")).to_contain_text("Acme Prop")
    expect(page.get_by_test_id("stage-badge")).to_contain_text("Challenge")
    expect(page.get_by_test_id("stat-balance")).to_contain_text("5,000.00")
    shot(page, "journey-2-portfolio")

    # A limit order far below the market rests; it shows under open orders.
    market = Market.objects.prefetch_related("tokens").get(question__contains="Aurora-3")
    page.goto(f"/markets/{market.condition_id}/")
    page.get_by_test_id("ticket-account").select_option(str(account_id))
    page.get_by_test_id("ticket-outcome-0").check(force=True)
    page.get_by_test_id("ticket-price").fill("5")
    page.get_by_test_id("ticket-size").fill("10")
    expect(page.get_by_test_id("preview-cost")).to_have_text("$0.50")
    page.get_by_test_id("ticket-submit").click()
    expect(page.get_by_test_id("ticket-result")).to_contain_text("is resting in the book")
    resting = Order.objects.get(account_id=account_id)
    shot(page, "journey-3-limit-resting")

    page.goto(f"/portfolio/?account={account_id}")
    row = page.locator(f'[data-testid="open-order-row"][data-order-id="{resting.pk}"]')
    expect(row).to_have_count(1)
    firm_account.refresh_from_db()
    assert firm_account.reserved_cash == Decimal("0.50")  # 10 × 5¢, no fee on a resting order
    shot(page, "journey-4-open-order")

    # Cancel it from the portfolio: the row goes, the reservation is released exactly.
    row.get_by_test_id("cancel-order").click()
    expect(page.get_by_test_id("open-order-row")).to_have_count(0)
    resting.refresh_from_db()
    firm_account.refresh_from_db()
    assert resting.status == "canceled" and firm_account.reserved_cash == Decimal("0")
    assert firm_account.cash == Decimal("5000")

    # A market order that fills: position and trade on the portfolio.
    page.goto(f"/markets/{market.condition_id}/")
    page.get_by_test_id("ticket-account").select_option(str(account_id))
    page.get_by_test_id("ticket-type-market").check(force=True)
    page.get_by_test_id("ticket-amount").fill("25")
    page.get_by_test_id("ticket-tif-market").select_option("FAK")
    page.get_by_test_id("ticket-submit").click()
    expect(page.get_by_test_id("ticket-result")).to_contain_text("Filled")
    filled = Order.objects.filter(account_id=account_id, status="matched").get()
    assert filled.filled_size > 0

    page.goto(f"/portfolio/?account={account_id}")
    expect(page.get_by_test_id("position-row")).to_have_count(1)
    fills = filled.fills.count()
    expect(page.locator('[data-testid="trade-row"][data-kind="fill"]')).to_have_count(fills)
    firm_account.refresh_from_db()
    assert firm_account.cash < Decimal("5000")
    shot(page, "journey-5-position-and-trade")

    # The leaderboard: the trader's personal account ranks, the firm's never appears.
    personal = personal_account_ensure(user=firm_account.owner)
    leaderboard_cache_clear()
    page.goto("/leaderboard/")
    rows = page.get_by_test_id("leaderboard-row")
    expect(rows).to_have_count(Account.objects.filter(tenant__isnull=True).count())
    expect(page.locator('[data-testid="leaderboard-row"][data-me="true"]')).to_have_count(1)
    assert personal.tenant_id is None and firm_account.tenant_id is not None
    expect(page.locator("body")).not_to_contain_text("Acme Prop")
    shot(page, "journey-6-leaderboard")

    # A bad order: the engine's refusal as a plain sentence next to its field.
    page.goto(f"/markets/{market.condition_id}/")
    page.get_by_test_id("ticket-account").select_option(str(account_id))
    page.get_by_test_id("ticket-outcome-0").check(force=True)
    page.get_by_test_id("ticket-price").fill("5")
    page.get_by_test_id("ticket-size").fill("200000")  # $10,000 > the $5,000 account
    page.get_by_test_id("ticket-submit").click()
    error = page.locator('[data-testid^="error-"]').first
    expect(error).to_contain_text(re.compile(r"enough", re.I))
    shot(page, "journey-7-bad-order")
    assert Order.objects.filter(account_id=account_id, status="live").count() == 0

    # The API keys page works for this trader too.
    page.goto("/keys/")
    page.get_by_test_id("key-create-form").locator("input[type=text]").first.fill("my bot")
    page.get_by_test_id("key-create").click()
    secret = page.get_by_test_id("key-secret")
    expect(secret).to_have_value(re.compile(r"^tk_"))
    # The key's underscores stay visible: the field's line box leaves room below the
    # baseline (at line-height "normal" some monospace fonts had them clipped into spaces).
    line, size = secret.evaluate(
        "e => { const s = getComputedStyle(e); return [parseFloat(s.lineHeight), "
        "parseFloat(s.fontSize)]; }"
    )
    assert line >= 1.5 * size, (line, size)
    shot(page, "journey-8-api-keys")
    assert user_id == firm_account.owner_id
