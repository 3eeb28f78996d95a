"""How ready emails reach SES (SEND_MODE).

`bulk` (default): the emails of one message that are ready in the same event-loop turn (their
claims came back in one script call) go out together, in SendBulkEmail calls of up to 50 entries
with the message's inline template; a message with one ready email, with attachments, or too
large for an inline template (1 MB) goes through SendEmail with the same content rendered here.
Each email still gets its own outcome: its entry's MessageId or error; an error of the whole
call (throttled, 5xx, timeout...) is the outcome of every email in it, except a rejection
(`SesRejected`: a 4xx such as BadRequest, or a MessageRejected naming one sandboxed recipient),
which sent nothing: each email of the call then goes through SendEmail on its own, so only the
bad one fails.

`single`: one SendEmail per recipient, for accounts or proxies that need it.
"""

from __future__ import annotations

import asyncio
from typing import Any, Protocol

from sesflow.common.errors import SesError, SesRejected
from sesflow.sender.compose import Email, bulk_request
from sesflow.sender.ses_client import MAX_BULK_ENTRIES, BulkEmail, OutgoingEmail

SEND_MODES = ("bulk", "single")


class SesApi(Protocol):
    async def send_email(self, email: OutgoingEmail) -> str: ...

    async def send_bulk_email(self, bulk: BulkEmail) -> list[str | SesError]: ...


class Outbox:
    def __init__(self, ses: Any, mode: str = "bulk") -> None:
        self.ses = ses
        self.bulk = mode == "bulk"
        self._ready: dict[str, list[tuple[Email, asyncio.Future[str]]]] = {}
        self._flushing = False
        self._calls: set[asyncio.Task[None]] = set()

    async def send(self, email: Email) -> str:
        """SES's MessageId for `email`, or raises its `common.errors.Ses*` error."""
        if not self.bulk or not email.template.bulk_ok:
            return str(await self.ses.send_email(email.rendered()))
        loop = asyncio.get_running_loop()
        future: asyncio.Future[str] = loop.create_future()
        self._ready.setdefault(email.msg_id, []).append((email, future))
        if not self._flushing:
            # after the other jobs woken in this turn have added theirs
            self._flushing = True
            loop.call_soon(self._flush)
        return await future

    def _flush(self) -> None:
        self._flushing = False
        ready, self._ready = self._ready, {}
        for items in ready.values():
            live = [(email, future) for email, future in items if not future.done()]
            for start in range(0, len(live), MAX_BULK_ENTRIES):
                task = asyncio.create_task(self._call(live[start : start + MAX_BULK_ENTRIES]))
                self._calls.add(task)
                task.add_done_callback(self._calls.discard)

    async def _call(self, items: list[tuple[Email, asyncio.Future[str]]]) -> None:
        try:
            outcomes = await self.deliver([email for email, _ in items])
        except BaseException:
            for _, future in items:
                future.cancel()
            raise
        for (_, future), outcome in zip(items, outcomes, strict=True):
            if future.done():
                continue
            if isinstance(outcome, BaseException):
                future.set_exception(outcome)
            else:
                future.set_result(outcome)

    def calls(self, emails: list[Email]) -> list[list[int]]:
        """How `emails` go out, as lists of their positions: one list per SES call (the emails
        of one message in bulk calls of up to 50 entries, every other email alone)."""
        if not self.bulk:
            return [[n] for n in range(len(emails))]
        alone: list[list[int]] = []
        by_message: dict[str, list[int]] = {}
        for n, email in enumerate(emails):
            if email.template.bulk_ok:
                by_message.setdefault(email.msg_id, []).append(n)
            else:
                alone.append([n])
        for group in by_message.values():
            alone += [
                group[start : start + MAX_BULK_ENTRIES]
                for start in range(0, len(group), MAX_BULK_ENTRIES)
            ]
        return alone

    async def deliver(self, emails: list[Email]) -> list[str | Exception]:
        """One SES call for `emails` (one message's, at most 50, or a single email): each
        email's MessageId or error."""
        try:
            if len(emails) == 1:
                return [str(await self.ses.send_email(emails[0].rendered()))]
            return await self._bulk(emails)
        except Exception as exc:
            return [exc] * len(emails)

    async def _bulk(self, emails: list[Email]) -> list[str | Exception]:
        """One outcome per email: its MessageId or its error (an exception)."""
        try:
            return list(await self.ses.send_bulk_email(bulk_request(emails)))
        except SesRejected:
            # The whole call was refused, so nothing was sent; SES refuses a call for one bad
            # entry (an invalid or sandboxed address): each goes alone, only that one fails.
            singles = (self.ses.send_email(email.rendered()) for email in emails)
            outcomes = await asyncio.gather(*singles, return_exceptions=True)
        for outcome in outcomes:
            if isinstance(outcome, BaseException) and not isinstance(outcome, Exception):
                raise outcome  # cancelled
        return [o if isinstance(o, Exception) else str(o) for o in outcomes]
