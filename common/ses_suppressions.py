"""SES's own account-level suppression list, mirrored into sesflow's (SES_SUPPRESSION_SYNC=1).

SES keeps a list of its own: a mail to an address on it is accepted, counted against the quota,
and answered with a bounce of subtype `OnAccountSuppressionList`. sesflow's global suppression
list drops such recipients before SES sees them, so with sync on:

- `import_from_ses` reads `ListSuppressedDestinations` page by page (NextToken) and adds every
  address with reason `bounce` or `complaint`, as SES says (HSETNX: an entry sesflow already
  holds keeps its own first reason). It only adds: an address taken off SES's list by hand stays
  on sesflow's until it is deleted there too. `sesflow suppressions sync` runs it, and so does
  the sender's upkeep, one replica per interval (`keys.ses_suppression_sync`).
- `mirror_put` / `mirror_delete` copy the API's PUT and DELETE of /v1/suppressions/{email} to
  SES, before sesflow's own list changes: when SES refuses or cannot be reached, the API answers
  502 and nothing changed on either side. A DELETE of an address SES does not hold is fine.

Calls go through boto3 (control plane, `common.aws`) in a thread.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from sesflow.common.aws import boto_client
from sesflow.common.errors import SesflowError
from sesflow.common.settings import Settings
from sesflow.common.suppression import SuppressionList, entry

SES_REASONS = {"BOUNCE": "bounce", "COMPLAINT": "complaint"}
PAGE_SIZE = 1000  # SES's largest page
DETAIL = "imported from the SES account-level suppression list"


class SesMirrorError(SesflowError):
    """SES did not take a change of its suppression list (or could not be read)."""


def ses_reason(reason: str) -> str:
    """SES knows two reasons: a complaint is COMPLAINT, anything else (bounce, manual, ...)
    BOUNCE."""
    return "COMPLAINT" if reason == "complaint" else "BOUNCE"


def _client(settings: Settings) -> Any:
    return boto_client(settings, "sesv2")


def _pages(settings: Settings) -> Iterator[list[dict[str, Any]]]:
    client = _client(settings)
    token: str | None = None
    while True:
        kwargs: dict[str, Any] = {"PageSize": PAGE_SIZE}
        if token:
            kwargs["NextToken"] = token
        try:
            answer = client.list_suppressed_destinations(**kwargs)
        except (BotoCoreError, ClientError) as exc:
            raise SesMirrorError(f"ListSuppressedDestinations failed: {exc}") from exc
        yield list(answer.get("SuppressedDestinationSummaries") or [])
        token = answer.get("NextToken")
        if not token:
            return


async def import_from_ses(settings: Settings, suppressions: SuppressionList) -> tuple[int, int]:
    """Add SES's list to sesflow's: (addresses read, addresses new to sesflow's list). Each page
    is read in a thread and written with one pipelined round trip of HSETNX."""
    pages = _pages(settings)
    read = added = 0
    while True:
        page = await asyncio.to_thread(next, pages, None)
        if page is None:
            return read, added
        items = [
            entry(
                str(s["EmailAddress"]),
                SES_REASONS.get(str(s.get("Reason")), "bounce"),
                DETAIL,
            )
            for s in page
            if s.get("EmailAddress")
        ]
        read += len(items)
        if items:
            pipe = suppressions.client.pipeline(transaction=False)
            for item in items:
                await suppressions.add(item, pipe)
            added += sum(int(bool(n)) for n in await pipe.execute())


def _put(settings: Settings, email: str, reason: str) -> None:
    try:
        _client(settings).put_suppressed_destination(EmailAddress=email, Reason=ses_reason(reason))
    except (BotoCoreError, ClientError) as exc:
        raise SesMirrorError(f"PutSuppressedDestination failed: {exc}") from exc


def _delete(settings: Settings, email: str) -> bool:
    try:
        _client(settings).delete_suppressed_destination(EmailAddress=email)
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") == "NotFoundException":
            return False  # not on SES's list: nothing to mirror
        raise SesMirrorError(f"DeleteSuppressedDestination failed: {exc}") from exc
    except BotoCoreError as exc:
        raise SesMirrorError(f"DeleteSuppressedDestination failed: {exc}") from exc
    return True


async def mirror_put(settings: Settings, email: str, reason: str) -> None:
    await asyncio.to_thread(_put, settings, email, reason)


async def mirror_delete(settings: Settings, email: str) -> bool:
    """True when SES held the address (and no longer does)."""
    return await asyncio.to_thread(_delete, settings, email)
