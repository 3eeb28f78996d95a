"""Helpers of the sender tests: a fake SES, message seeding, and a sender run in-process."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any

from sesflow.common.keys import SENDERS_GROUP, Keys, PartitionKeys
from sesflow.common.schema import Event, Job, MessageContent, decode_event
from sesflow.sender.state import recipient_states
from sesflow.sender.worker import Sender

SECRET = b"test-tracking-secret"


class FakeSes:
    """`send_email` that records recipients. `script[address]` is a list of exceptions to raise on
    that address's successive calls (then it succeeds); `latency` delays every call.
    `send_bulk_email` answers each entry the same way (the exception as that entry's outcome);
    `bulk_sizes` lists the entries of every bulk call."""

    def __init__(self, latency: float = 0.0) -> None:
        self.latency = latency
        self.script: dict[str, list[BaseException]] = {}
        self.calls: Counter[str] = Counter()
        self.sent: Counter[str] = Counter()
        self.emails: list[Any] = []
        self.hook: Callable[[Any], Awaitable[None]] | None = None
        self.bulk_sizes: list[int] = []

    async def send_email(self, email: Any) -> str:
        self.calls[email.to] += 1
        if self.hook is not None:
            await self.hook(email)
        if self.latency:
            await asyncio.sleep(self.latency)
        return self._one(email.to, email)

    def _one(self, to: str, email: Any) -> str:
        errors = self.script.get(to)
        if errors:
            raise errors.pop(0)
        self.sent[to] += 1
        self.emails.append(email)
        return f"ses-{len(self.emails)}"

    async def send_bulk_email(self, bulk: Any) -> list[Any]:
        self.bulk_sizes.append(len(bulk.entries))
        for entry in bulk.entries:
            self.calls[entry.to] += 1
        for entry in bulk.entries:
            if self.hook is not None:
                await self.hook(entry)
        if self.latency:
            await asyncio.sleep(self.latency)
        outcomes: list[Any] = []
        for entry in bulk.entries:
            try:
                outcomes.append(self._one(entry.to, entry))
            except Exception as exc:
                outcomes.append(exc)
        return outcomes


def new_msg_id(offset_ms: int = 0) -> str:
    return f"{int(time.time() * 1000) + offset_ms}-0"


async def queue_jobs(
    redis: Any,
    keys: Keys,
    emails: list[str],
    *,
    msg_id: str | None = None,
    store_content: bool = True,
    from_email: str = "",
    **content_fields: Any,
) -> tuple[str, list[str]]:
    """Store a message's content (topic `t1`; `content_fields` of `MessageContent` on top) and
    queue one job per address; returns (msg_id, entry ids)."""
    msg_id = msg_id or new_msg_id()
    part = keys.for_message(msg_id)
    if store_content:
        content = MessageContent(
            msg_id=msg_id,
            topic="t1",
            subject="Hello",
            html="<p>Hi <a href='https://example.com/x'>x</a></p>",
            total=len(emails),
            accepted_ms=int(msg_id.split("-")[0]),
            from_email=from_email,
            **content_fields,
        )
        await redis.hset(part.message(msg_id), mapping=content.to_hash())
    ids = []
    for index, email in enumerate(emails):
        job = Job(msg_id=msg_id, index=index, email=email)
        ids.append(await redis.xadd(part.sends, job.fields()))
    return msg_id, ids


async def states(redis: Any, part: PartitionKeys, msg_id: str) -> dict[int, str]:
    """index -> stored state: a final byte (`s`, `f`, ...), a claim, or an older version's text."""
    return await recipient_states(redis, part, msg_id)


async def events(redis: Any, part: PartitionKeys) -> list[Event]:
    return [decode_event(f["e"]) for _, f in await redis.xrange(part.events)]


async def pending_count(redis: Any, part: PartitionKeys) -> int:
    """Jobs the senders' group has read and not acknowledged. The group must exist: a sender
    that never started (NOGROUP) is an error, not an empty backlog."""
    return int((await redis.xpending(part.sends, SENDERS_GROUP))["pending"])


class Running:
    """A sender running in a task until `stop()`."""

    def __init__(self, sender: Sender) -> None:
        self.sender = sender
        self.stop_event = asyncio.Event()
        self.task = asyncio.create_task(sender.run(self.stop_event))

    async def stop(self) -> None:
        self.stop_event.set()
        await asyncio.wait_for(self.task, 20)


async def reasons(redis: Any, part: PartitionKeys, msg_id: str) -> dict[int, str]:
    """index -> why it failed, from the `failed` events (the state keeps only `f`)."""
    return {e.index: e.reason for e in await events(redis, part) if e.type == "failed"}
