"""The trader UI in headless Chromium against the app on loopback, fed by a fake Polymarket
through the real ingester: markets list, live book, placing orders, error sentences."""

from __future__ import annotations

from decimal import Decimal

from playwright.sync_api import expect

from marketdata.bus import get_bus
from marketdata.models import Market
from trading.models import Order

from .conftest import PHONE


def _market(question_part: str) -> Market:
    return Market.objects.prefetch_related("tokens").get(question__contains=question_part)


def test_markets_list_search_and_category_filter(page, feed, shot):
    page.goto("/markets/")
    rows = page.get_by_test_id("market-row")
    expect(rows).to_have_count(9)  # the demo's open markets
    expect(rows.first.get_by_test_id("quote-0")).to_contain_text("¢")
    shot(page, "markets-list")

    page.get_by_test_id("market-search").fill("Northbridge")
    expect(rows).to_have_count(3)
    expect(page).to_have_url("/markets/?q=Northbridge&category=&status=open&sort=volume")
    page.get_by_test_id("market-search").fill("")
    expect(rows).to_have_count(9)

    page.get_by_test_id("market-category").select_option("Weather")
    expect(rows).to_have_count(1)
    expect(rows.first).to_contain_text("Port Ellis")
    shot(page, "markets-list-filtered")

    page.get_by_test_id("market-category").select_option("")
    page.get_by_test_id("market-status").select_option("all")
    expect(rows).to_have_count(10)
    # The demo's closed market was resolved by discovery (Gamma one-hot prices).
    expect(page.get_by_test_id("status-badge").filter(has_text="Resolved")).to_have_count(1)
    page.get_by_text("Ending soon").click()
    expect(rows.first).to_contain_text("Bank of Examplia")  # 18 Mar 2027, the soonest end


def test_markets_list_on_a_phone(browser, app_server, feed, shot):
    context = browser.new_context(viewport=PHONE, base_url=app_server.url, is_mobile=True)
    phone = context.new_page()
    phone.goto("/markets/")
    expect(phone.get_by_test_id("market-row")).to_have_count(9)
    width = phone.evaluate("document.documentElement.scrollWidth")
    assert width <= PHONE["width"], f"horizontal scroll on a phone: {width}px"
    shot(phone, "markets-list-phone")
    phone.get_by_test_id("market-link").first.click()
    expect(phone.get_by_test_id("book-0")).to_be_visible()
    width = phone.evaluate("document.documentElement.scrollWidth")
    assert width <= PHONE["width"], f"horizontal scroll on a phone: {width}px"
    shot(phone, "market-page-phone")
    context.close()


def test_market_page_book_follows_the_feed(page, feed, shot):
    market = _market("Aurora-3")
    token = sorted(market.tokens.all(), key=lambda t: t.index)[0]
    page.goto(f"/markets/{market.condition_id}/")
    book = page.get_by_test_id("book-0")
    expect(page.get_by_test_id("book-state-0")).to_have_text("Live")
    expect(page.get_by_test_id("signin-to-trade")).to_be_visible()
    chart = page.get_by_test_id("price-chart")
    expect(chart).to_have_attribute("data-loaded", "1d")  # drawn, or "no history" said
    expect(chart.locator("canvas, .chart-note")).not_to_have_count(0)
    expect(book).not_to_contain_text("4,321")
    shot(page, "market-page")

    best_bid = max(Decimal(p) for p in feed.fake.books[token.token_id].bids)

    def add_size(b):
        b.bids[str(best_bid)] = "4321"

    feed.change_book(token.token_id, add_size)
    expect(book).to_contain_text("4,321")  # the new size, without a reload
    assert get_bus().latest(token.token_id).bids[0] == [str(best_bid), "4321"]
    # A better bid moves the mid: the headline price follows (out-of-band swap).
    fake_book = feed.fake.books[token.token_id]
    best_ask = min(Decimal(p) for p in fake_book.asks)
    tick = Decimal(fake_book.tick_size)
    assert best_bid + tick < best_ask

    def better_bid(b):
        b.bids[str(best_bid + tick)] = "50"

    feed.change_book(token.token_id, better_bid)
    new_mid = format(((best_bid + tick + best_ask) / 2 * 100).normalize(), "f") + "¢"
    expect(page.get_by_test_id("outcome-summary-0")).to_contain_text(new_mid)
    feed.trade(token.token_id, price=str(best_bid), size="77.7", side="SELL")
    prints = page.get_by_test_id("print-row")
    expect(prints.first).to_contain_text("77.7")  # the market's print, live
    expect(prints.first).to_contain_text("Sell")
    shot(page, "market-page-after-feed-update")


def test_place_a_limit_order_that_rests(trader_page, feed, trader, shot):
    page = trader_page
    market = _market("Aurora-3")
    page.goto(f"/markets/{market.condition_id}/")
    page.get_by_test_id("ticket-outcome-0").check(force=True)
    page.get_by_test_id("ticket-price").fill("5")
    page.get_by_test_id("ticket-size").fill("10")
    preview = page.get_by_test_id("ticket-preview")
    expect(preview.get_by_test_id("preview-cost")).to_have_text("$0.50")
    expect(preview.get_by_test_id("preview-payout")).to_contain_text("$10.00")
    expect(page.get_by_test_id("ticket-submit")).to_have_text("Buy Yes", use_inner_text=True)
    page.get_by_test_id("ticket-side-sell").check(force=True)
    expect(page.get_by_test_id("ticket-submit")).to_have_text("Sell Yes", use_inner_text=True)
    expect(preview).to_contain_text("You don't hold enough shares of this outcome")
    page.get_by_test_id("ticket-side-buy").check(force=True)
    expect(preview.get_by_test_id("preview-cost")).to_have_text("$0.50")
    shot(page, "ticket-limit-preview")
    page.get_by_test_id("ticket-submit").click()
    result = page.get_by_test_id("ticket-result")
    expect(result).to_contain_text("is resting in the book")
    order = Order.objects.get(account=trader.account)
    assert order.status == "live" and order.price == Decimal("0.05")
    expect(page.get_by_test_id("ticket-order-id")).to_have_text(str(order.pk))
    expect(page.get_by_test_id("open-order-row")).to_have_count(1)
    shot(page, "ticket-limit-resting")


def test_the_ticket_preview_logs_no_errors(trader_page, feed, trader):
    # htmx must not complain while the preview refreshes (an inherited hx-disabled-elt
    # pointed the preview's requests at a button it cannot find: an error per preview).
    # A request the loaded test server drops is not what this checks: htmx's own echo of
    # such a failure (htmx:afterRequest / htmx:sendError) is left out when one happened.
    page = trader_page
    logged: list[str] = []
    failed: list[str] = []
    page.on("console", lambda m: logged.append(m.text) if m.type in ("error", "warning") else None)
    page.on("requestfailed", lambda r: failed.append(r.url))
    market = _market("Aurora-3")
    page.goto(f"/markets/{market.condition_id}/")
    page.get_by_test_id("ticket-outcome-0").check(force=True)
    page.get_by_test_id("ticket-price").fill("5")
    page.get_by_test_id("ticket-size").fill("10")
    expect(page.get_by_test_id("preview-cost")).to_have_text("$0.50")
    page.get_by_test_id("ticket-size").fill("12")
    expect(page.get_by_test_id("preview-cost")).to_have_text("$0.60")
    echoes = ("htmx:afterRequest", "htmx:sendError")
    assert [m for m in logged if not (failed and m.startswith(echoes))] == []


def test_place_a_market_order_that_fills(trader_page, feed, trader, shot):
    page = trader_page
    market = _market("Aurora-3")
    page.goto(f"/markets/{market.condition_id}/")
    page.get_by_test_id("ticket-type-market").check(force=True)
    expect(page.get_by_test_id("ticket-amount")).to_be_visible()
    expect(page.get_by_test_id("ticket-price")).to_be_hidden()
    page.get_by_test_id("ticket-amount").fill("20")
    page.get_by_test_id("ticket-tif-market").select_option("FAK")
    expect(page.get_by_test_id("preview-fill")).to_contain_text("sh @")
    page.get_by_test_id("ticket-submit").click()
    expect(page.get_by_test_id("ticket-result")).to_contain_text("Filled")
    order = Order.objects.get(account=trader.account)
    assert order.status == "matched" and order.filled_size > 0
    expect(page.get_by_test_id("position-row")).to_have_count(1)
    expect(page.get_by_test_id("fill-row")).to_have_count(order.fills.count())
    shot(page, "ticket-market-filled")


def test_a_bad_order_shows_the_sentence_next_to_the_field(trader_page, feed, trader, shot):
    page = trader_page
    market = _market("Aurora-3")
    page.goto(f"/markets/{market.condition_id}/")
    page.get_by_test_id("ticket-price").fill("5.5")  # tick is 1¢
    page.get_by_test_id("ticket-size").fill("10")
    expect(page.get_by_test_id("ticket-preview")).to_contain_text("steps of 1¢")
    page.get_by_test_id("ticket-submit").click()
    error = page.get_by_test_id("error-price")
    expect(error).to_have_text("Use a price in steps of 1¢, between 1¢ and 99¢.")
    # Next to the price input: inside the same field block.
    field = page.get_by_test_id("ticket-price").locator("xpath=..")
    expect(field.get_by_test_id("error-price")).to_be_visible()
    shot(page, "ticket-error-price")

    page.get_by_test_id("ticket-price").fill("5")
    page.get_by_test_id("ticket-size").fill("1")  # below the 5-share minimum
    page.get_by_test_id("ticket-submit").click()
    expect(page.get_by_test_id("error-quantity")).to_have_text(
        "This market's minimum order is 5 shares."
    )
    assert not Order.objects.filter(account=trader.account).exists()


def test_price_chart_draws_the_history(page, feed, shot, monkeypatch):
    from marketdata.clients import ClobClient

    start = 1_790_000_000
    points = [(start + 60 * i, Decimal("0.5") + Decimal(i % 17) / 100) for i in range(120)]
    seen = []

    def history(self, token_id, **kwargs):  # the server thread calls this, in this process
        seen.append((token_id, kwargs.get("interval")))
        return points

    monkeypatch.setattr(ClobClient, "prices_history", history)
    market = _market("SYNTHCOIN")
    page.goto(f"/markets/{market.condition_id}/")
    chart = page.get_by_test_id("price-chart")
    expect(chart).to_have_attribute("data-loaded", "1d")
    expect(chart.locator("canvas")).to_have_count(1)
    page.get_by_role("button", name="1W").click()
    expect(chart).to_have_attribute("data-loaded", "1w")
    expect(chart.locator("canvas")).to_have_count(1)
    assert [interval for _, interval in seen] == ["1d", "1w"]
    shot(page, "market-page-chart")


def test_gtd_order_from_a_phone_in_another_timezone(browser, app_server, feed, trader, shot):
    """The expiry is typed in the trader's local time and stored as the same instant."""
    import datetime as dt

    from tests.web.e2e.harness import session_cookie_for

    context = browser.new_context(
        viewport=PHONE,
        base_url=app_server.url,
        is_mobile=True,
        timezone_id="America/New_York",
    )
    context.add_cookies([session_cookie_for(trader.user, app_server.url)])
    phone = context.new_page()
    market = _market("Port Ellis")
    phone.goto(f"/markets/{market.condition_id}/")
    expect(phone.get_by_test_id("ticket-expiry")).to_be_hidden()
    phone.get_by_test_id("ticket-tif-limit").select_option("GTD")
    expiry = phone.get_by_test_id("ticket-expiry")
    expect(expiry).to_be_visible()
    phone.get_by_test_id("ticket-price").fill("3")
    phone.get_by_test_id("ticket-size").fill("20")
    expiry.fill("2027-01-15T09:30")  # New York, UTC-5 in January
    expect(phone.get_by_test_id("preview-cost")).to_have_text("$0.60")
    width = phone.evaluate("document.documentElement.scrollWidth")
    assert width <= PHONE["width"], f"horizontal scroll on a phone: {width}px"
    shot(phone, "ticket-gtd-phone")
    phone.get_by_test_id("ticket-submit").click()
    expect(phone.get_by_test_id("ticket-result")).to_contain_text("(GTD)")
    order = Order.objects.get(account=trader.account)
    assert order.time_in_force == "GTD" and order.status == "live"
    assert order.expiration == dt.datetime(2027, 1, 15, 14, 30, tzinfo=dt.UTC)
    context.close()
