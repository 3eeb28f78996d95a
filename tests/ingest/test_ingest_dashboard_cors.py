"""The dashboard (served by stats on another port) may call the pause routes from the browser:
ingest answers its preflight and lets it read the answers, and no other origin or route."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from sesflow.common.keys import Keys
from sesflow.common.pauses import Pauses
from sesflow.common.settings import Settings

KEY = "ingest-cors-test-api-key"


async def test_the_dashboard_origin_may_pause_and_resume(
    api_client: Callable[[Settings], Any], make_settings: Callable[..., Settings], redis: Any
) -> None:
    settings = make_settings(API_KEY=KEY)
    dashboard = f"http://127.0.0.1:{settings.stats_port}"
    async with api_client(settings) as http:
        # The preflight carries no key: it is answered before the key is checked.
        resp = await http.options(
            "/v1/topics/news/pause",
            headers={
                "Origin": dashboard,
                "Access-Control-Request-Method": "POST",
                "Access-Control-Request-Headers": "x-api-key",
            },
        )
        assert resp.status == 204
        assert resp.headers["Access-Control-Allow-Origin"] == dashboard
        assert resp.headers["Access-Control-Allow-Methods"] == "POST"
        assert "x-api-key" in resp.headers["Access-Control-Allow-Headers"]

        resp = await http.post(
            "/v1/topics/news/pause", headers={"Origin": dashboard, "x-api-key": KEY}
        )
        assert resp.status == 200, await resp.text()
        assert resp.headers["Access-Control-Allow-Origin"] == dashboard
        assert (await Pauses(redis, Keys()).get("news")) is not None
        resp = await http.post("/v1/resume", headers={"Origin": dashboard, "x-api-key": KEY})
        assert resp.status == 200 and resp.headers["Access-Control-Allow-Origin"] == dashboard

        # The POST still needs the key; the page can read the refusal.
        resp = await http.post("/v1/pause", headers={"Origin": dashboard})
        assert resp.status == 401
        assert resp.headers["Access-Control-Allow-Origin"] == dashboard
        assert (await resp.json())["error"] == "unauthorized"
        assert (await Pauses(redis, Keys()).get("")) is None


async def test_other_origins_and_routes_get_no_cross_origin_access(
    api_client: Callable[[Settings], Any], make_settings: Callable[..., Settings]
) -> None:
    settings = make_settings(API_KEY=KEY)
    dashboard = f"http://127.0.0.1:{settings.stats_port}"
    async with api_client(settings) as http:
        for origin, path in [
            ("http://evil.example", "/v1/pause"),
            (f"http://127.0.0.1:{settings.stats_port + 7}", "/v1/pause"),
            (f"http://other.host:{settings.stats_port}", "/v1/pause"),  # not this host
            (dashboard, "/v1/messages"),  # only the pause routes
        ]:
            resp = await http.options(
                path, headers={"Origin": origin, "Access-Control-Request-Method": "POST"}
            )
            assert resp.status != 204, (origin, path)
            assert "Access-Control-Allow-Origin" not in resp.headers, (origin, path)


async def test_stats_url_names_the_dashboard_origin(
    api_client: Callable[[Settings], Any], make_settings: Callable[..., Settings]
) -> None:
    settings = make_settings(API_KEY=KEY, STATS_URL="https://stats.example.com/")
    async with api_client(settings) as http:
        preflight = {"Access-Control-Request-Method": "POST"}
        resp = await http.options(
            "/v1/pause", headers={"Origin": "https://stats.example.com", **preflight}
        )
        assert resp.status == 204
        assert resp.headers["Access-Control-Allow-Origin"] == "https://stats.example.com"
        local = f"http://127.0.0.1:{settings.stats_port}"
        resp = await http.options("/v1/pause", headers={"Origin": local, **preflight})
        assert "Access-Control-Allow-Origin" not in resp.headers
