"""A local SES endpoint for `sesflow up` with no AWS account: moto's server on loopback, with
the sender identity verified so that SendEmail succeeds, and SESv2 SendBulkEmail with inline
templates, and the account-level suppression list (List/Put/DeleteSuppressedDestination), which
moto lacks (`bulk_email_support`, `suppression_list_support`). Nothing leaves the machine."""

from __future__ import annotations

import json
import logging
import time
from typing import Any
from urllib.parse import unquote

from sesflow.common.handlebars import render

LOCAL_CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "sesflow-local",
    "AWS_SECRET_ACCESS_KEY": "sesflow-local",
}


# What the local endpoint reports from GetSendQuota: an account out of the SES sandbox.
LOCAL_MAX_SEND_RATE = 1000
LOCAL_MAX_24H_SEND = 10_000_000


def production_quota() -> None:
    """moto reports a sandboxed account's quota (1/s, 200 a day), which would hold a local demo
    at one email a second and stop it after 200. The local endpoint stands for a production
    account instead; the server runs in this process, so this changes only what it answers."""
    from moto.ses import models

    base = models.SESQuota

    class ProductionQuota(base):  # type: ignore[misc, valid-type]
        def __init__(self, sent: int) -> None:
            super().__init__(sent)
            self.max_send_rate = LOCAL_MAX_SEND_RATE
            self.max24_hour_send = LOCAL_MAX_24H_SEND

    if base.__name__ != "ProductionQuota":
        models.SESQuota = ProductionQuota  # type: ignore[misc]


def send_bulk_email(response: Any) -> str:
    """SESv2 SendBulkEmail on moto's SESv2 response class: each entry is rendered the way SES
    renders an inline template (`common.handlebars`) and sent through moto's SendEmail, so it is
    checked (verified sender, valid address) and counted like any other mail. A sender that is
    not verified fails the whole call, as it does on SES; an entry's own problem is its Status."""
    from moto.ses.exceptions import InvalidParameterValue, MessageRejectedError

    params = json.loads(response.body)
    template = params.get("DefaultContent", {}).get("Template", {})
    parts = template.get("TemplateContent") or {}
    defaults = json.loads(template.get("TemplateData") or "{}")
    source = params.get("FromEmailAddress", "")
    results: list[dict[str, str]] = []
    for entry in params.get("BulkEmailEntries", []):
        replacement = entry.get("ReplacementEmailContent", {}).get("ReplacementTemplate", {})
        data = {**defaults, **json.loads(replacement.get("ReplacementTemplateData") or "{}")}
        body = parts.get("Html") or parts.get("Text") or ""
        try:
            message = response.sesv2_backend.send_email(
                source=source,
                destinations=entry.get("Destination", {}),
                subject=render(parts.get("Subject", ""), data),
                body=render(body, data),
            )
        except MessageRejectedError as exc:
            if "not verified" in str(exc):
                raise
            results.append({"Status": "MESSAGE_REJECTED", "Error": str(exc)})
        except InvalidParameterValue as exc:
            results.append({"Status": "INVALID_PARAMETER", "Error": str(exc)})
        else:
            results.append({"Status": "SUCCESS", "MessageId": message.id})
    return json.dumps({"BulkEmailEntryResults": results})


def bulk_email_support() -> None:
    """Teach moto's SESv2 server SendBulkEmail: a route for its path, and the action the botocore
    model names for it (moto's dispatch calls the method of that name)."""
    from moto.sesv2 import urls
    from moto.sesv2.responses import SESV2Response

    if not hasattr(SESV2Response, "send_bulk_email"):
        SESV2Response.send_bulk_email = send_bulk_email  # type: ignore[attr-defined]
    urls.url_paths.setdefault("{0}/v2/email/outbound-bulk-emails$", SESV2Response.dispatch)


SUPPRESSION_PATH = "/v2/email/suppression/addresses"


def _suppressed(response: Any) -> dict[str, tuple[str, float]]:
    """The account's suppression list (address -> reason, update time), kept on moto's SESv2
    backend of the region asked."""
    backend = response.sesv2_backend
    if not hasattr(backend, "sesflow_suppressed"):
        backend.sesflow_suppressed = {}
    found: dict[str, tuple[str, float]] = backend.sesflow_suppressed
    return found


def list_suppressed_destinations(response: Any) -> str:
    """SESv2 ListSuppressedDestinations: pages in address order; NextToken is the offset."""
    entries = _suppressed(response)
    size = int((response.querystring.get("PageSize") or ["1000"])[0])
    start = int((response.querystring.get("NextToken") or ["0"])[0])
    names = sorted(entries)
    page = names[start : start + max(1, min(size, 1000))]
    answer: dict[str, Any] = {
        "SuppressedDestinationSummaries": [
            {"EmailAddress": n, "Reason": entries[n][0], "LastUpdateTime": entries[n][1]}
            for n in page
        ]
    }
    if start + len(page) < len(names):
        answer["NextToken"] = str(start + len(page))
    return json.dumps(answer)


def put_suppressed_destination(response: Any) -> str:
    params = json.loads(response.body)
    _suppressed(response)[str(params["EmailAddress"]).lower()] = (
        str(params["Reason"]),
        time.time(),
    )
    return "{}"


def delete_suppressed_destination(response: Any) -> str:
    from moto.ses.exceptions import NotFoundException

    email = unquote(response.path.rsplit("/", 1)[1]).lower()
    if _suppressed(response).pop(email, None) is None:
        raise NotFoundException(f"{email} is not on the suppression list")
    return "{}"


def suppression_list_support() -> None:
    """Teach moto's SESv2 server the account-level suppression list (SESv2's REST shapes)."""
    from moto.sesv2 import urls
    from moto.sesv2.responses import SESV2Response

    for name, handler in (
        ("list_suppressed_destinations", list_suppressed_destinations),
        ("put_suppressed_destination", put_suppressed_destination),
        ("delete_suppressed_destination", delete_suppressed_destination),
    ):
        if not hasattr(SESV2Response, name):
            setattr(SESV2Response, name, handler)
    urls.url_paths.setdefault("{0}" + SUPPRESSION_PATH + "$", SESV2Response.dispatch)
    urls.url_paths.setdefault(
        "{0}" + SUPPRESSION_PATH + "/(?P<EmailAddress>[^/]+)$", SESV2Response.dispatch
    )


class LocalSes:
    def __init__(self, host: str = "127.0.0.1", port: int = 0, region: str = "us-east-1") -> None:
        self.host = host
        self.port = port
        self.region = region
        self._server: Any = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self, identities: list[str]) -> str:
        try:
            from moto.server import ThreadedMotoServer
        except ImportError as exc:  # pragma: no cover - depends on the install
            raise RuntimeError(
                "the local SES endpoint needs moto: pip install 'sesflow[local]'"
            ) from exc
        production_quota()
        bulk_email_support()
        suppression_list_support()
        # The server logs every request; sesflow's own logs say what matters.
        logging.getLogger("werkzeug").setLevel(logging.ERROR)
        self._server = ThreadedMotoServer(ip_address=self.host, port=self.port, verbose=False)
        self._server.start()
        self.port = int(self._server.get_host_and_port()[1])
        self.verify(identities)
        return self.url

    def verify(self, identities: list[str]) -> None:
        """Verify each address and its domain, as a sandboxed SES account would require."""
        import boto3

        ses = boto3.client(
            "ses",
            endpoint_url=self.url,
            region_name=self.region,
            aws_access_key_id=LOCAL_CREDENTIALS["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=LOCAL_CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
        )
        for identity in identities:
            ses.verify_email_identity(EmailAddress=identity)
            if "@" in identity:
                ses.verify_domain_identity(Domain=identity.rsplit("@", 1)[1])

    def stop(self) -> None:
        if self._server is not None:
            self._server.stop()
            self._server = None
