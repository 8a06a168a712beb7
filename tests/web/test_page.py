"""The budget page in headless Chromium: log in with an admin key, open the org, and read the
numbers the page shows (bars, charts, tables, events) against what the service charged. And
the user's own view for app keys, which shows nothing of anyone else's."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Page, sync_playwright

from tests.web.conftest import CHROMIUM, CHROMIUM_ARGS, Service

# The README's screenshot is refreshed only on request (BUDGETD_SCREENSHOT=1): a normal run
# must not rewrite a tracked file.
SCREENSHOT = Path(__file__).resolve().parents[2] / "docs" / "budget-page.png"
REFRESH_SCREENSHOT = os.environ.get("BUDGETD_SCREENSHOT") == "1"


def usd(micros: int) -> str:
    return f"${micros / 1e6:,.2f}"


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with sync_playwright() as p:
        launched = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield launched
        launched.close()


def log_in(browser: Browser, service: Service, key: str) -> Page:
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    page.goto(f"{service.url}/ui/")
    assert page.url.endswith("/ui/login")
    page.fill("#key", key)
    page.click("button[type=submit]")
    return page


def test_org_page_shows_the_right_numbers(browser: Browser, service: Service) -> None:
    page = log_in(browser, service, service.admin_key)
    page.wait_for_url("**/ui/orgs/acme")
    total = sum(service.costs.values())

    org_bar = page.locator('.budget[data-budget="org-month"]')
    assert org_bar.locator("b.spent").inner_text() == usd(total)
    assert org_bar.locator(".limit").inner_text() == "$50.00"
    assert org_bar.locator(".mark").count() == 3  # thresholds 50, 80, 100
    bob = page.locator('.budget[data-budget="user-day"][data-entity="bob"]')
    assert bob.locator("b.spent").inner_text() == usd(service.costs["bob"])

    # Team, key, tag and session budgets, each with what its members, key, tag or session
    # spent; and their views.
    chatters = service.costs["alice"] + service.costs["carol"]
    for budget, entity, spent in (
        ("team-day", "chatters", chatters),
        ("key-day", "web", total),
        ("project-day", "project:web", service.costs["alice"]),
        ("run", "carol-run", service.costs["carol"]),
    ):
        bar = page.locator(f'.budget[data-budget="{budget}"][data-entity="{entity}"]')
        assert bar.locator("b.spent").inner_text() == usd(spent), budget
    for view, entity, spent in (
        ("team", "chatters", chatters),
        ("key", "web", total),
        ("tag", "project:web", service.costs["alice"]),
        ("session", "carol-run", service.costs["carol"]),
    ):
        row = page.locator(f'#by-{view} tr[data-entity="{entity}"] td')
        assert row.nth(1).inner_text() == usd(spent), view

    # The three views: the bar chart and the table name each user with their spend.
    users = page.locator("#by-user")
    for user, cost in service.costs.items():
        assert users.locator(f'tr[data-entity="{user}"] td').nth(1).inner_text() == usd(cost)
    assert users.locator(".hbar .value").first.inner_text() == usd(max(service.costs.values()))
    assert page.locator("#by-model tr.total td").nth(1).inner_text() == usd(total)

    # The charts draw what the page was given: the daily chart's series add up to the spend,
    # and the burn-down's last actual point is the limit less the spend.
    page.wait_for_function("window.budgetdCharts && window.budgetdCharts.daily")
    daily_sum = page.evaluate(
        "window.budgetdCharts.daily.data.slice(1).flat().reduce((a, b) => a + b, 0)"
    )
    assert daily_sum == total
    remaining = page.evaluate(
        "window.budgetdCharts.burndown.data[1].filter(v => v !== null).slice(-1)[0]"
    )
    assert remaining == 50_000_000 - total
    assert page.locator("#daily-chart canvas").bounding_box()["width"] > 400  # type: ignore[index]
    # Hovering the chart shows a figure in the legend (uPlot's own rendering of the data).
    page.locator("#burndown-chart .u-over").hover()
    assert page.locator("#burndown-chart .u-legend").inner_text().count("$") >= 1

    # Recent events: bob's thresholds and his block, with the figures of the moment.
    events = page.locator("#events tr.event")
    kinds = [
        (
            events.nth(i).locator("td").nth(1).inner_text(),
            events.nth(i).locator("td").nth(3).inner_text(),
        )
        for i in range(events.count())
    ]
    assert ("hard_limit", "bob") in kinds
    assert ("threshold", "bob") in kinds
    block = page.locator("#events tr.event.hard_limit").first
    assert block.locator("td").nth(5).inner_text() == "$0.05"
    assert "user-day" in page.locator("#policy").inner_text()

    shot = page.screenshot(full_page=True)
    assert shot.startswith(b"\x89PNG")
    if REFRESH_SCREENSHOT:
        SCREENSHOT.write_bytes(shot)
    page.close()


def test_app_key_sees_only_its_users_own_budget(browser: Browser, service: Service) -> None:
    page = log_in(browser, service, service.app_key)
    page.wait_for_url("**/ui/me")
    page.goto(f"{service.url}/ui/me?user=carol")
    assert page.locator("#my-spend .spent").inner_text() == usd(service.costs["carol"])
    budget = page.locator('.budget[data-budget="user-day"]')
    assert budget.locator(".remaining").inner_text() == usd(50_000 - service.costs["carol"])
    text = page.content()
    for other in ("alice", "bob", "org-month", "feature-day", usd(sum(service.costs.values()))):
        assert other not in text, other
    # Naming another user is refused, not shown.
    page.goto(f"{service.url}/ui/me?user=alice")
    assert "shows user 'carol' only" in page.inner_text("main")
    assert usd(service.costs["alice"]) not in page.content()
    # The admin page is not for app keys.
    page.goto(f"{service.url}/ui/orgs/acme")
    assert "needs an admin key" in page.inner_text("main")
    assert "org-month" not in page.content()
    page.close()


def test_a_wrong_key_does_not_log_in(browser: Browser, service: Service) -> None:
    page = log_in(browser, service, "bd_not-a-key")
    assert "not valid" in page.inner_text("main")
    page.goto(f"{service.url}/ui/orgs/acme")
    assert page.url.endswith("/ui/login")
    page.close()
