"""The SES stub's account-level suppression list: SESv2's REST shapes, as botocore's model has
them.

    ListSuppressedDestinations   GET    /v2/email/suppression/addresses  (?PageSize=&NextToken=)
    PutSuppressedDestination     PUT    /v2/email/suppression/addresses  {"EmailAddress", "Reason"}
    DeleteSuppressedDestination  DELETE /v2/email/suppression/addresses/{EmailAddress}
    GetSuppressedDestination     GET    /v2/email/suppression/addresses/{EmailAddress}

A page holds at most `page_size` addresses (SES: 1000), so a test can make the list span several
pages; NextToken is the offset into the addresses in order. `fail_status` answers every call of
these routes with that status (0 = none), to test how a failure to mirror is answered.
"""

from __future__ import annotations

import time
from typing import Any

import msgspec
from aiohttp import web

SUPPRESSION_PATH = "/v2/email/suppression/addresses"
REASONS = ("BOUNCE", "COMPLAINT")
MAX_PAGE_SIZE = 1000


class _Put(msgspec.Struct):
    EmailAddress: str
    Reason: str


class AccountSuppressionList:
    """address (lower-cased) -> (reason, last update time in epoch seconds)."""

    def __init__(self) -> None:
        self.entries: dict[str, tuple[str, float]] = {}
        self.page_size = MAX_PAGE_SIZE
        self.fail_status = 0
        self.calls: list[str] = []  # operation names, in order

    def put(self, email: str, reason: str = "BOUNCE") -> None:
        self.entries[email.strip().lower()] = (reason, time.time())

    # --- handlers ---------------------------------------------------------------------------

    async def list(self, request: web.Request) -> web.Response:
        self.calls.append("ListSuppressedDestinations")
        if self.fail_status:
            return _error(self.fail_status, "InternalFailure", "injected failure")
        try:
            size = int(request.query.get("PageSize") or MAX_PAGE_SIZE)
            start = int(request.query.get("NextToken") or 0)
        except ValueError:
            return _error(400, "InvalidNextTokenException", "bad NextToken or PageSize")
        size = max(1, min(size, self.page_size))
        names = sorted(self.entries)
        page = names[start : start + size]
        answer: dict[str, Any] = {
            "SuppressedDestinationSummaries": [
                {
                    "EmailAddress": name,
                    "Reason": self.entries[name][0],
                    "LastUpdateTime": self.entries[name][1],
                }
                for name in page
            ]
        }
        if start + size < len(names):
            answer["NextToken"] = str(start + size)
        return web.json_response(answer)

    async def put_handler(self, request: web.Request) -> web.Response:
        self.calls.append("PutSuppressedDestination")
        if self.fail_status:
            return _error(self.fail_status, "InternalFailure", "injected failure")
        try:
            body = msgspec.json.decode(await request.read(), type=_Put)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            return _error(400, "BadRequestException", str(exc))
        if body.Reason not in REASONS or "@" not in body.EmailAddress:
            return _error(400, "BadRequestException", "invalid EmailAddress or Reason")
        self.put(body.EmailAddress, body.Reason)
        return web.json_response({})

    async def delete(self, request: web.Request) -> web.Response:
        self.calls.append("DeleteSuppressedDestination")
        if self.fail_status:
            return _error(self.fail_status, "InternalFailure", "injected failure")
        email = request.match_info["email"].strip().lower()
        if self.entries.pop(email, None) is None:
            return _error(404, "NotFoundException", f"{email} is not on the suppression list")
        return web.json_response({})

    async def get(self, request: web.Request) -> web.Response:
        self.calls.append("GetSuppressedDestination")
        email = request.match_info["email"].strip().lower()
        if email not in self.entries:
            return _error(404, "NotFoundException", f"{email} is not on the suppression list")
        reason, updated = self.entries[email]
        return web.json_response(
            {
                "SuppressedDestination": {
                    "EmailAddress": email,
                    "Reason": reason,
                    "LastUpdateTime": updated,
                }
            }
        )

    async def control(self, request: web.Request) -> web.Response:
        """POST /stub/suppressions: {"put": {address: reason}, "page_size", "fail_status",
        "clear": true}; answers the list as {address: reason}."""
        data = msgspec.json.decode(await request.read() or b"{}")
        if data.get("clear"):
            self.entries.clear()
        for email, reason in (data.get("put") or {}).items():
            self.put(email, reason)
        if "page_size" in data:
            self.page_size = int(data["page_size"])
        if "fail_status" in data:
            self.fail_status = int(data["fail_status"])
        return web.json_response({e: r for e, (r, _) in sorted(self.entries.items())})

    def add_routes(self, app: web.Application) -> None:
        app.router.add_get(SUPPRESSION_PATH, self.list)
        app.router.add_put(SUPPRESSION_PATH, self.put_handler)
        app.router.add_delete(SUPPRESSION_PATH + "/{email}", self.delete)
        app.router.add_get(SUPPRESSION_PATH + "/{email}", self.get)
        app.router.add_post("/stub/suppressions", self.control)


def _error(status: int, code: str, message: str) -> web.Response:
    return web.Response(
        status=status,
        body=msgspec.json.encode({"message": message}),
        content_type="application/json",
        headers={"x-amzn-ErrorType": f"{code}:http://internal.amazon.com/coral/com.amazon.ses/"},
    )
