"""Pause and resume bulk sending (authenticated like the other ingest routes).

POST /v1/topics/{topic_id}/pause    hold the topic's bulk mail: its recipients keep their place,
                                    take no rate token and are not failed; scheduled ones wait
POST /v1/topics/{topic_id}/resume   let it go on, from where it was
POST /v1/pause                      hold every bulk topic (transactional mail keeps going)
POST /v1/resume                     let bulk sending go on (topics paused on their own stay so)

Each answers {"topic_id"?, "paused", "paused_reason", "paused_at"}. Pausing twice keeps the
first reason and time; resuming what is not paused is harmless.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from sesflow.common.http import json_response
from sesflow.common.pauses import ALL_BULK, NOT_PAUSED, Pauses
from sesflow.ingest.validation import check_topic

PAUSES = web.AppKey("pauses", Pauses)


async def pause_topic(request: web.Request) -> web.Response:
    topic = check_topic(request.match_info["topic_id"])
    pause, _ = await request.app[PAUSES].pause(topic, "manual")
    return json_response({"topic_id": topic, **pause.view()})


async def resume_topic(request: web.Request) -> web.Response:
    topic = check_topic(request.match_info["topic_id"])
    await request.app[PAUSES].resume(topic)
    return json_response({"topic_id": topic, **NOT_PAUSED})


async def pause_all(request: web.Request) -> web.Response:
    pause, _ = await request.app[PAUSES].pause(ALL_BULK, "manual")
    return json_response(pause.view())


async def resume_all(request: web.Request) -> web.Response:
    await request.app[PAUSES].resume(ALL_BULK)
    return json_response(dict[str, Any](NOT_PAUSED))


def add_pause_routes(app: web.Application) -> None:
    app.router.add_post("/v1/topics/{topic_id}/pause", pause_topic)
    app.router.add_post("/v1/topics/{topic_id}/resume", resume_topic)
    app.router.add_post("/v1/pause", pause_all)
    app.router.add_post("/v1/resume", resume_all)
