"""The budget page (admin keys) and a user's own view (app keys), server-rendered.

Log-in takes an API key in a form and keeps it in an HttpOnly, SameSite=Strict cookie scoped to
``/ui``; every page authenticates it as the API does a Bearer header. With authentication off
(no keys file) there is nothing to log in to and every page is open, as the API is."""

from __future__ import annotations

from datetime import date, timedelta
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path
from typing import Any

import msgspec
from jinja2 import Environment, PackageLoader, select_autoescape
from litestar import Request, Response, get, post
from litestar.datastructures import Cookie
from litestar.params import FromPath, FromQuery, URLEncodedBody
from litestar.response import Redirect
from litestar.static_files import create_static_files_router
from litestar.types import ControllerRouterHandler

from budgetd.api.deps import caller_of, engine_of
from budgetd.auth import Principal
from budgetd.errors import BudgetdError, Forbidden, InvalidRequest, Unauthorized
from budgetd.money import MICROS_PER_USD
from budgetd.reports import audit
from budgetd.store.events import EventQueue
from budgetd.web import data as pages

COOKIE = "budgetd_key"
STATIC = Path(pages.__file__).parent / "static"


def _usd(micros: int | None, places: str = "0.01") -> str:
    if micros is None:
        return "—"
    value = (Decimal(micros) / MICROS_PER_USD).quantize(Decimal(places), ROUND_HALF_UP)
    return f"-${-value:,}" if value < 0 else f"${value:,}"


def _last_day(until: date) -> date:
    return until - timedelta(days=1)


TEMPLATES = Environment(
    loader=PackageLoader("budgetd.web", "templates"),
    autoescape=select_autoescape(["j2", "html"]),
    trim_blocks=True,
    lstrip_blocks=True,
)
TEMPLATES.filters["usd"] = _usd
TEMPLATES.filters["usd4"] = lambda m: _usd(m, "0.0001")
TEMPLATES.filters["last_day"] = _last_day


def _html(template: str, status: int = 200, **context: Any) -> Response[str]:
    return Response(
        TEMPLATES.get_template(template).render(**context),
        status_code=status,
        media_type="text/html",
        headers={"cache-control": "no-store"},
    )


def _principal(request: Request[Any, Any, Any]) -> Principal | None:
    """The logged-in key's principal (anyone when authentication is off); None when not logged
    in or the key is no longer valid. The same check as a Bearer header, so the page can never
    be more open than the API."""
    key = request.cookies.get(COOKIE)
    try:
        return caller_of(request.app.state, [f"Bearer {key}"] if key else [])
    except Unauthorized:
        return None


def _who(p: Principal) -> str:
    return f"{p.name or p.role} ({p.role}{', ' + p.org if p.org else ''})"


@get("/ui/login", include_in_schema=False)
async def login_form() -> Response[str]:
    return _html("login.html.j2")


@post("/ui/login", include_in_schema=False)
async def login(
    request: Request[Any, Any, Any],
    data: URLEncodedBody[dict[str, str]],
) -> Response[Any]:
    key = data.get("key", "").strip()
    try:
        caller_of(request.app.state, [f"Bearer {key}"])
    except Unauthorized:
        return _html("login.html.j2", status=401, error="That key is not valid here.")
    return Redirect(
        "/ui/",
        cookies=[Cookie(key=COOKIE, value=key, path="/ui", httponly=True, samesite="strict")],
    )


@post("/ui/logout", include_in_schema=False)
async def logout() -> Redirect:
    return Redirect("/ui/login", cookies=[Cookie(key=COOKIE, value="", path="/ui", max_age=0)])


@get("/ui/", include_in_schema=False)
async def home(request: Request[Any, Any, Any]) -> Response[Any]:
    p = _principal(request)
    if p is None:
        return Redirect("/ui/login")
    if p.role != "admin":
        return Redirect("/ui/me")
    if p.org is not None:
        return Redirect(f"/ui/orgs/{p.org}")
    registry = engine_of(request).registry
    orgs = sorted(registry.current.orgs) if registry.loaded else []
    return _html("orgs.html.j2", orgs=orgs, who=_who(p))


def _charts(page: pages.OrgPage) -> dict[str, Any]:
    days = [str(d) for d in pages.days_of(page.since, page.until)]
    models = sorted({r.entity for r in page.daily.rows})
    cell = {(r.day, r.entity): r.cost_micros for r in page.daily.rows}
    return {
        "burndown": msgspec.to_builtins(page.burndown),
        "daily": {
            "days": days,
            "models": models,
            "values": [[cell.get((d, m), 0) for d in days] for m in models],
        },
    }


@get("/ui/orgs/{org:str}", include_in_schema=False)
async def org_page(request: Request[Any, Any, Any], org: FromPath[str]) -> Response[Any]:
    p = _principal(request)
    if p is None:
        return Redirect("/ui/login")
    try:
        if p.role != "admin":
            raise Forbidden("the org page needs an admin key")
        p.require_org(org)
        engine = engine_of(request)
        queue: EventQueue = request.app.state.queue
        page = await pages.org_page(engine, queue, org)
    except BudgetdError as exc:
        return _html("login.html.j2", status=exc.status, error=exc.detail, who=_who(p))
    await audit.admin_read(queue.store, org, p, request.url.path, request.url.query or "")
    return _html("org.html.j2", page=page, charts=_charts(page), who=_who(p))


def _viewable_user(p: Principal, asked: str | None) -> str:
    """Whose spend this key may see. An app key sees only the user its keys-file entry binds it
    to (``user:``): usage data is tenant data, and an app key shared by a backend must not read
    its other users' spend by changing ``?user=``. Admin keys (and an unauthenticated quickstart)
    may look at any user of their org."""
    if p.role == "admin" or p.org is None:
        if not asked:
            raise InvalidRequest("name the user (?user=)", field="user")
        return asked
    if p.user is None:
        raise Forbidden(
            "this app key is bound to no user: give its keys-file entry a `user:` to see that"
            " user's own spend here",
            field="user",
        )
    if asked and asked != p.user:
        raise Forbidden(f"this key shows user {p.user!r} only", field="user")
    return p.user


@get("/ui/me", include_in_schema=False)
async def me(request: Request[Any, Any, Any], user: FromQuery[str | None] = None) -> Response[Any]:
    p = _principal(request)
    if p is None:
        return Redirect("/ui/login")
    engine = engine_of(request)
    org = p.org or next(iter(sorted(engine.registry.current.orgs)), None)
    try:
        if org is None:
            raise InvalidRequest("no org is defined", field="org")
        queue: EventQueue = request.app.state.queue
        page = await pages.user_page(engine, queue.store, org, _viewable_user(p, user))
    except BudgetdError as exc:
        return _html("login.html.j2", status=exc.status, error=exc.detail, who=_who(p))
    return _html("me.html.j2", page=page, who=_who(p))


ROUTES: list[ControllerRouterHandler] = [
    login_form,
    login,
    logout,
    home,
    org_page,
    me,
    create_static_files_router(path="/ui/static", directories=[STATIC], include_in_schema=False),
]
