"""Lua scripts live as `.lua` files in `common/lua/`, each with a header documenting KEYS and
ARGV. They are read once and registered once per client; every key goes through KEYS."""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Sequence
from importlib import resources
from typing import Any

from redis.exceptions import NoScriptError

from sesflow.common.connection import Redis
from sesflow.common.lean_redis import lane_of


@functools.cache
def source(name: str) -> str:
    return (
        resources.files("sesflow.common").joinpath("lua", f"{name}.lua").read_text(encoding="utf-8")
    )


class Script:
    """EVALSHA of one script, loaded again when Redis does not know it (first use, restart):
    on the client's lean lane when it has one (common/lean_redis.py), else through redis-py."""

    def __init__(self, client: Redis, text: str) -> None:
        self.client = client
        self.text = text
        self.sha = hashlib.sha1(text.encode("utf-8")).hexdigest()  # Redis's own script id

    async def __call__(self, keys: Sequence[Any] = (), args: Sequence[Any] = ()) -> Any:
        lane = lane_of(self.client)
        command = ("EVALSHA", self.sha, len(keys), *keys, *args)
        try:
            if lane is not None:
                return await lane.execute(*command)
            return await self.client.execute_command(*command)
        except NoScriptError:
            if lane is not None:
                await lane.execute("SCRIPT", "LOAD", self.text)
                return await lane.execute(*command)
            await self.client.script_load(self.text)
            return await self.client.execute_command(*command)


def register(client: Redis, name: str) -> Script:
    """The script `common/lua/<name>.lua` for `client`."""
    return Script(client, source(name))
