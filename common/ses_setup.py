"""Per-message SES setup: the configuration set (and with it the dedicated IP pool) and the SES
tenant (`TenantName`) a message may name, checked by ingest (HTTP 400, or a dead letter for an
entry XADDed to `requests`) before anything is stored.

The rules, read from the settings once:

- `configuration_set`: a name in SES_CONFIGURATION_SETS, or SES_CONFIGURATION_SET (the default,
  always allowed). Empty SES_CONFIGURATION_SETS: a message may name only the default. A message
  that names none is sent with the default (as before);
- `tenant`: a name in SES_TENANTS. Empty SES_TENANTS: no message may name a tenant;
- a message with a tenant that SES_TENANT_IDENTITIES lists (`acme:acme.com|news.acme.com,
  globex:globex.io`) must be sent from one of its identities: the From address itself, or its
  domain exactly (a subdomain is another identity). A tenant the setting does not list is not
  checked (SES still refuses an identity the tenant is not associated with).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from sesflow.common.errors import InputError

# SES's rule for configuration set and tenant names: 1 to 64 letters, digits, `-` and `_`.
NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")
MAX_SHOWN = 20


def parse_tenant_identities(text: str) -> dict[str, frozenset[str]]:
    """`acme:acme.com|news.acme.com,globex:globex.io` -> {tenant: identities, lower-cased};
    ValueError saying what is wrong."""
    out: dict[str, frozenset[str]] = {}
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        tenant, sep, listed = part.partition(":")
        tenant = tenant.strip()
        identities = frozenset(i.strip().lower() for i in listed.split("|") if i.strip())
        if not sep or not NAME.fullmatch(tenant) or not identities:
            raise ValueError(f"{part[:100]!r} is not `tenant:identity|identity`")
        if tenant in out:
            raise ValueError(f"tenant {tenant!r} is listed twice")
        out[tenant] = identities
    return out


def ses_setup_problem(sets: tuple[str, ...], tenants: tuple[str, ...], identities: str) -> str:
    """Why these settings cannot be used ("" when they can)."""
    for name, values in (("SES_CONFIGURATION_SETS", sets), ("SES_TENANTS", tenants)):
        bad = [v for v in values if not NAME.fullmatch(v)]
        if bad:
            return f"{name}: {bad[0][:100]!r} is not an SES name (1-64 of A-Z a-z 0-9 - _)"
    try:
        parsed = parse_tenant_identities(identities)
    except ValueError as exc:
        return f"SES_TENANT_IDENTITIES: {exc}"
    unknown = sorted(set(parsed) - set(tenants))
    if unknown:
        return f"SES_TENANT_IDENTITIES names tenants that SES_TENANTS does not list: {unknown}"
    return ""


def address_of(mailbox: str) -> str:
    """`Name <a@b>` or `a@b` -> `a@b`, lower-cased."""
    return mailbox.rpartition("<")[2].rstrip(">").strip().lower()


def shown(names: frozenset[str]) -> str:
    return ", ".join(sorted(names)[:MAX_SHOWN]) or "none"


@dataclass(frozen=True, slots=True)
class SesSetupPolicy:
    """What a message may name; `check` is the one place it is enforced."""

    default_set: str = ""
    sets: frozenset[str] = frozenset()
    tenants: frozenset[str] = frozenset()
    identities: dict[str, frozenset[str]] = field(default_factory=dict)
    default_sender: str = ""

    @classmethod
    def from_values(
        cls,
        default_set: str,
        sets: tuple[str, ...],
        tenants: tuple[str, ...],
        identities: str,
        default_sender: str,
    ) -> SesSetupPolicy:
        return cls(
            default_set=default_set,
            sets=frozenset(sets),
            tenants=frozenset(tenants),
            identities=parse_tenant_identities(identities),
            default_sender=default_sender,
        )

    def check_configuration_set(self, name: str | None) -> str | None:
        """The configuration set a message names (None: the default), or 400."""
        if name is None or not name.strip():
            return None
        name = name.strip()
        if name == self.default_set or name in self.sets:
            return name
        allowed = self.sets | ({self.default_set} if self.default_set else set())
        raise InputError(
            "invalid_configuration_set",
            f"configuration_set {name[:100]!r} is not allowed (SES_CONFIGURATION_SETS: "
            f"{shown(frozenset(allowed))})",
        )

    def check_tenant(self, name: str | None, from_email: str | None) -> str | None:
        """The tenant a message names (None: none), or 400: unknown tenant, or a From that is
        not one of its identities."""
        if name is None or not name.strip():
            return None
        name = name.strip()
        if name not in self.tenants:
            raise InputError(
                "invalid_tenant",
                f"tenant {name[:100]!r} is not allowed (SES_TENANTS: {shown(self.tenants)})",
            )
        identities = self.identities.get(name)
        if identities is None:
            return name
        address = address_of(from_email or self.default_sender)
        if address in identities or address.rpartition("@")[2] in identities:
            return name
        raise InputError(
            "tenant_identity",
            f"from_email {address[:100]!r} is not an identity of tenant {name!r} "
            f"(SES_TENANT_IDENTITIES: {shown(identities)})",
        )
