"""The SES stub's account setup, as `sesflow check` reads it: identities (DKIM, custom MAIL FROM),
configuration sets and their event destinations, and the account's standing in GetAccount.
Kept apart from the sending calls of `support.sesstub`, which mounts these routes.

    GetEmailIdentity                      GET /v2/email/identities/{identity}
    GetConfigurationSet                   GET /v2/email/configuration-sets/{name}
    GetConfigurationSetEventDestinations  GET /v2/email/configuration-sets/{name}/event-destinations
    control                               POST /stub/setup   a whole `SetupConfig` as JSON

An identity or configuration set that is not configured answers NotFoundException, as SES
does. `SesStub(...).setup.config = SetupConfig(...)` sets it in process.
"""

from __future__ import annotations

import uuid
from typing import Any

import msgspec
from aiohttp import web

IDENTITY_PATH = "/v2/email/identities/{identity}"
CONFIGURATION_SET_PATH = "/v2/email/configuration-sets/{name}"
EVENT_DESTINATIONS_PATH = "/v2/email/configuration-sets/{name}/event-destinations"
SETUP_CONTROL_PATH = "/stub/setup"

# What a configuration set publishes by default: everything sesflow reads from SES.
DEFAULT_EVENTS = ["SEND", "REJECT", "BOUNCE", "COMPLAINT", "DELIVERY", "DELIVERY_DELAY"]


class IdentitySetup(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """One SES identity (a domain or an address); the defaults are a healthy domain."""

    verified: bool = True
    dkim_status: str = "SUCCESS"  # PENDING | SUCCESS | FAILED | TEMPORARY_FAILURE | NOT_STARTED
    dkim_signing: bool = True
    dkim_tokens: list[str] = msgspec.field(default_factory=lambda: ["tok1", "tok2", "tok3"])
    mail_from_domain: str = ""  # "" = no custom MAIL FROM
    mail_from_status: str = "SUCCESS"  # PENDING | SUCCESS | FAILED | TEMPORARY_FAILURE


class EventDestination(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    name: str = "sesflow-feedback"
    enabled: bool = True
    topic_arn: str = ""  # "" = not an SNS destination (say, CloudWatch)
    events: list[str] = msgspec.field(default_factory=lambda: list(DEFAULT_EVENTS))


class AccountSetup(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    production_access: bool = True
    sending_enabled: bool = True
    enforcement_status: str = "HEALTHY"  # HEALTHY | PROBATION | SHUTDOWN


class SetupConfig(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    identities: dict[str, IdentitySetup] = {}
    # configuration set name -> its event destinations (a set exists when it is a key)
    configuration_sets: dict[str, list[EventDestination]] = {}
    account: AccountSetup = msgspec.field(default_factory=AccountSetup)


_encoder = msgspec.json.Encoder()
_setup_decoder = msgspec.json.Decoder(SetupConfig)


def _json(data: Any) -> web.Response:
    return web.Response(
        body=_encoder.encode(data),
        content_type="application/json",
        headers={"x-amzn-RequestId": str(uuid.uuid4())},
    )


def _not_found(what: str) -> web.Response:
    return web.Response(
        status=404,
        body=_encoder.encode({"message": f"{what} does not exist."}),
        content_type="application/json",
        headers={
            "x-amzn-RequestId": str(uuid.uuid4()),
            "x-amzn-ErrorType": "NotFoundException:http://internal.amazon.com/coral/com.amazon.ses/",
        },
    )


def identity_body(name: str, identity: IdentitySetup) -> dict[str, Any]:
    """GetEmailIdentity's answer, in SESv2's shape."""
    body: dict[str, Any] = {
        "IdentityType": "EMAIL_ADDRESS" if "@" in name else "DOMAIN",
        "FeedbackForwardingStatus": True,
        "VerifiedForSendingStatus": identity.verified,
        "VerificationStatus": "SUCCESS" if identity.verified else "PENDING",
        "DkimAttributes": {
            "SigningEnabled": identity.dkim_signing,
            "Status": identity.dkim_status,
            "Tokens": identity.dkim_tokens,
            "SigningAttributesOrigin": "AWS_SES",
        },
        "Policies": {},
        "Tags": [],
    }
    if identity.mail_from_domain:
        body["MailFromAttributes"] = {
            "MailFromDomain": identity.mail_from_domain,
            "MailFromDomainStatus": identity.mail_from_status,
            "BehaviorOnMxFailure": "USE_DEFAULT_VALUE",
        }
    return body


def destination_body(destination: EventDestination) -> dict[str, Any]:
    body: dict[str, Any] = {
        "Name": destination.name,
        "Enabled": destination.enabled,
        "MatchingEventTypes": destination.events,
    }
    if destination.topic_arn:
        body["SnsDestination"] = {"TopicArn": destination.topic_arn}
    else:
        body["CloudWatchDestination"] = {"DimensionConfigurations": []}
    return body


class SetupState:
    """The setup the stub reports; `config` may be replaced at any time."""

    def __init__(self) -> None:
        self.config = SetupConfig()

    def account_fields(self) -> dict[str, Any]:
        """GetAccount's fields about the account's standing (the quota is the stub's)."""
        account = self.config.account
        return {
            "EnforcementStatus": account.enforcement_status,
            "ProductionAccessEnabled": account.production_access,
            "SendingEnabled": account.sending_enabled,
        }

    async def get_email_identity(self, request: web.Request) -> web.StreamResponse:
        name = request.match_info["identity"]
        identity = self.config.identities.get(name) or self.config.identities.get(name.lower())
        if identity is None:
            return _not_found(f"Email identity {name}")
        return _json(identity_body(name, identity))

    async def get_configuration_set(self, request: web.Request) -> web.StreamResponse:
        name = request.match_info["name"]
        if name not in self.config.configuration_sets:
            return _not_found(f"Configuration set <{name}>")
        return _json({"ConfigurationSetName": name, "SendingOptions": {"SendingEnabled": True}})

    async def get_event_destinations(self, request: web.Request) -> web.StreamResponse:
        name = request.match_info["name"]
        destinations = self.config.configuration_sets.get(name)
        if destinations is None:
            return _not_found(f"Configuration set <{name}>")
        return _json({"EventDestinations": [destination_body(d) for d in destinations]})

    async def control(self, request: web.Request) -> web.StreamResponse:
        try:
            self.config = _setup_decoder.decode(await request.read() or b"{}")
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            return web.json_response({"error": "bad_setup", "detail": str(exc)}, status=400)
        return web.Response(body=_encoder.encode(self.config), content_type="application/json")

    def add_routes(self, app: web.Application) -> None:
        app.router.add_get(IDENTITY_PATH, self.get_email_identity)
        app.router.add_get(CONFIGURATION_SET_PATH, self.get_configuration_set)
        app.router.add_get(EVENT_DESTINATIONS_PATH, self.get_event_destinations)
        app.router.add_post(SETUP_CONTROL_PATH, self.control)
