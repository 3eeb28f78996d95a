"""The send path on plain boto3 (SES_CLIENT=boto3): the same interface as `SesClient`, for
comparison in the benchmarks and as a fallback where botocore's own HTTP stack is required.

boto3 is synchronous, so each call runs in a thread pool of SENDER_CONCURRENCY threads; the
client has `max_attempts=1` (no retries of its own: a retried send may go out twice and bypasses
the shared rate limit) and one connection per thread. Answers and failures are mapped to the same
`common.errors.Ses*` classes as `SesClient`, so the sender behaves identically. It costs ~4x the
client CPU per call of `SesClient` (see docs/performance.md).
"""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import Collection
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from botocore.config import Config
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    ConnectTimeoutError,
    CredentialRetrievalError,
    EndpointConnectionError,
    NoCredentialsError,
    ParamValidationError,
    PartialCredentialsError,
    TokenRetrievalError,
)

from sesflow.common.aws import boto_session
from sesflow.common.errors import SesAmbiguous, SesError, SesPaused, SesRejected, SesTransient
from sesflow.common.settings import Settings
from sesflow.sender.ses_client import (
    MAX_CONNECT_TIMEOUT,
    BulkEmail,
    OutgoingEmail,
    bulk_outcomes,
    scoped_pause,
    ses_error,
)


def _pairs(pairs: tuple[tuple[str, str], ...]) -> list[dict[str, str]]:
    return [{"Name": n, "Value": v} for n, v in pairs]


def request_kwargs(email: OutgoingEmail) -> dict[str, Any]:
    """The keyword arguments of `sesv2.send_email` for `email` (what SesClient encodes)."""
    body: dict[str, Any] = {"Html": {"Data": email.html, "Charset": "UTF-8"}}
    if email.text:
        body["Text"] = {"Data": email.text, "Charset": "UTF-8"}
    simple: dict[str, Any] = {"Subject": {"Data": email.subject, "Charset": "UTF-8"}, "Body": body}
    if email.headers:
        simple["Headers"] = _pairs(email.headers)
    if email.attachments:
        simple["Attachments"] = [
            {
                "FileName": a.FileName,
                "ContentType": a.ContentType,
                "RawContent": base64.b64decode(a.RawContent),
                "ContentDisposition": a.ContentDisposition,
                "ContentTransferEncoding": a.ContentTransferEncoding,
            }
            for a in email.attachments
        ]
    kwargs: dict[str, Any] = {
        "FromEmailAddress": email.from_email,
        "Destination": {"ToAddresses": [email.to]},
        "Content": {"Simple": simple},
    }
    if email.reply_to:
        kwargs["ReplyToAddresses"] = list(email.reply_to)
    if email.tags:
        kwargs["EmailTags"] = _pairs(email.tags)
    if email.configuration_set:
        kwargs["ConfigurationSetName"] = email.configuration_set
    if email.tenant:
        kwargs["TenantName"] = email.tenant
    return kwargs


def bulk_kwargs(bulk: BulkEmail) -> dict[str, Any]:
    """The keyword arguments of `sesv2.send_bulk_email` for `bulk`."""
    content: dict[str, Any] = {"Subject": bulk.subject, "Html": bulk.html}
    if bulk.text:
        content["Text"] = bulk.text
    template: dict[str, Any] = {"TemplateContent": content, "TemplateData": bulk.default_data}
    if bulk.headers:
        template["Headers"] = _pairs(bulk.headers)
    entries = []
    for entry in bulk.entries:
        item: dict[str, Any] = {
            "Destination": {"ToAddresses": [entry.to]},
            "ReplacementEmailContent": {
                "ReplacementTemplate": {"ReplacementTemplateData": entry.data}
            },
        }
        if entry.headers:
            item["ReplacementHeaders"] = _pairs(entry.headers)
        if entry.tags:
            item["ReplacementTags"] = _pairs(entry.tags)
        entries.append(item)
    kwargs: dict[str, Any] = {
        "FromEmailAddress": bulk.from_email,
        "DefaultContent": {"Template": template},
        "BulkEmailEntries": entries,
    }
    if bulk.reply_to:
        kwargs["ReplyToAddresses"] = list(bulk.reply_to)
    if bulk.configuration_set:
        kwargs["ConfigurationSetName"] = bulk.configuration_set
    if bulk.tenant:
        kwargs["TenantName"] = bulk.tenant
    return kwargs


def setup_of(kwargs: dict[str, Any]) -> tuple[str, str]:
    """(configuration set, tenant) of a request."""
    return kwargs.get("ConfigurationSetName", ""), kwargs.get("TenantName", "")


NO_CREDENTIALS = (
    NoCredentialsError,
    PartialCredentialsError,
    CredentialRetrievalError,
    TokenRetrievalError,
)


def error_from_boto(exc: Exception, recipients: Collection[str] = ()) -> SesError:
    """botocore's failure of one call as a Ses* error, by the same rules as SesClient: an SES
    answer by its code; no connection is `SesTransient` (not sent); invalid parameters are
    `SesRejected` and missing credentials `SesPaused` (both before any request); anything after
    the request went out (read timeout, connection closed) is `SesAmbiguous`."""
    if isinstance(exc, ClientError):
        error = exc.response.get("Error", {})
        code = str(error.get("Code", "") or "")
        message = str(error.get("Message", "") or "")
        status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
        code = code or f"HTTP{status}"
        return ses_error(status, code, message, recipients)
    name = type(exc).__name__
    if isinstance(exc, EndpointConnectionError | ConnectTimeoutError):
        return SesTransient("ConnectError", f"{name}: {exc}")
    # raised before any request is made: never "maybe sent"
    if isinstance(exc, ParamValidationError):
        return SesRejected("InvalidParameter", f"{name}: {exc}")
    if isinstance(exc, NO_CREDENTIALS):
        return SesPaused("CredentialsUnavailable", f"{name}: {exc}")
    return SesAmbiguous("ConnectionLost", f"{name}: {exc}")


class Boto3SesClient:
    """`send_email` and `send_bulk_email` over boto3's sesv2 client in threads."""

    def __init__(self, settings: Settings, *, max_connections: int = 100) -> None:
        self.max_connections = max_connections
        # One client shared by every thread: botocore clients are thread-safe, and its pool
        # holds a connection per thread.
        self._client: Any = boto_session(settings).client(
            "sesv2",
            endpoint_url=settings.ses_endpoint_url or None,
            config=Config(
                retries={"max_attempts": 1, "mode": "standard"},
                connect_timeout=min(settings.ses_timeout, MAX_CONNECT_TIMEOUT),
                read_timeout=settings.ses_timeout,
                max_pool_connections=max_connections,
            ),
        )
        self._pool = ThreadPoolExecutor(max_workers=max_connections, thread_name_prefix="ses")

    def _send(self, kwargs: dict[str, Any]) -> str:
        try:
            reply = self._client.send_email(**kwargs)
        except (ClientError, BotoCoreError) as exc:
            error = error_from_boto(exc, kwargs["Destination"]["ToAddresses"])
            raise scoped_pause(error, *setup_of(kwargs)) from exc
        message_id = reply.get("MessageId")
        if not message_id:
            raise SesAmbiguous("MalformedResponse", "no MessageId in the answer", 200)
        return str(message_id)

    def _send_bulk(self, kwargs: dict[str, Any]) -> list[str | SesError]:
        recipients = [e["Destination"]["ToAddresses"][0] for e in kwargs["BulkEmailEntries"]]
        try:
            reply = self._client.send_bulk_email(**kwargs)
        except (ClientError, BotoCoreError) as exc:
            raise scoped_pause(error_from_boto(exc, recipients), *setup_of(kwargs)) from exc
        results = reply.get("BulkEmailEntryResults") or []
        body = json.dumps({"BulkEmailEntryResults": results}, default=str).encode()
        return [
            o if isinstance(o, str) else scoped_pause(o, *setup_of(kwargs))
            for o in bulk_outcomes(body, recipients)
        ]

    async def send_bulk_email(self, bulk: BulkEmail) -> list[str | SesError]:
        """One SendBulkEmail call; see `SesClient.send_bulk_email`."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, self._send_bulk, bulk_kwargs(bulk))

    async def send_email(self, email: OutgoingEmail) -> str:
        """Send one email; returns SES's MessageId or raises a `common.errors.Ses*` error."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, self._send, request_kwargs(email))

    async def close(self) -> None:
        """Wait for calls in flight, then free the threads; calling it twice is harmless."""
        await asyncio.to_thread(self._pool.shutdown, wait=True)
