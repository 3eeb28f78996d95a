"""A domain's DMARC record (RFC 7489), read from DNS with dnspython: `_dmarc.<domain>`, else the
record of a parent domain, which DMARC applies to its subdomains (its `sp=`, else its `p=`).

The parent walk stops at two labels (`example.com`): without the public-suffix list it cannot
tell `example.co.uk` from `co.uk`, and asking one more name than needed is harmless.

Nothing here raises for what DNS answers: no record, a timeout, a server failure and a record
that is not DMARC each come back as a `DmarcAnswer` whose `problem` says what happened, so the
check reports it instead of crashing.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import dns.exception
import dns.resolver

DEFAULT_TIMEOUT = 5.0
POLICIES = ("none", "quarantine", "reject")


@dataclass(frozen=True, slots=True)
class DmarcAnswer:
    """What DNS says of a domain's DMARC. `found_at` is the domain whose record applies;
    `policy` the one that applies to the asked domain (`sp=` of a parent's record)."""

    domain: str
    found_at: str = ""
    record: str = ""
    policy: str = ""
    tags: dict[str, str] = field(default_factory=dict)
    problem: str = ""  # "" when a valid record was found
    unreachable: bool = False  # DNS did not answer (timeout, SERVFAIL, no resolver)


@dataclass(frozen=True, slots=True)
class DnsServer:
    host: str
    port: int = 53

    @classmethod
    def parse(cls, text: str) -> DnsServer:
        """`IP`, `IP:PORT`, or `[IPv6]:PORT`; ValueError when it is none of them."""
        text = text.strip()
        if text.startswith("["):
            host, _, rest = text[1:].partition("]")
            port = rest.removeprefix(":") or "53"
        elif text.count(":") == 1:
            host, port = text.split(":")
        else:
            host, port = text, "53"
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"{text!r} is not IP, IP:PORT or [IPv6]:PORT")
        return cls(host, int(port))


def resolver(servers: list[DnsServer], timeout: float) -> dns.resolver.Resolver:
    """The system's resolver, or one asking only `servers` (all on the first one's port:
    dnspython keeps one port per resolver)."""
    if servers:
        res = dns.resolver.Resolver(configure=False)
        res.nameservers = [s.host for s in servers]
        res.port = servers[0].port
    else:
        res = dns.resolver.Resolver()  # raises NoResolverConfiguration without resolv.conf
    res.timeout = timeout
    res.lifetime = timeout
    return res


def parse_record(text: str) -> dict[str, str]:
    """The tags of a DMARC record (`v=DMARC1; p=reject; rua=...`), names lower-cased."""
    tags: dict[str, str] = {}
    for part in text.split(";"):
        name, eq, value = part.partition("=")
        if eq and name.strip():
            tags.setdefault(name.strip().lower(), value.strip())
    return tags


def candidates(domain: str) -> list[str]:
    """The domain, then each parent down to two labels."""
    labels = domain.lower().rstrip(".").split(".")
    return [".".join(labels[i:]) for i in range(max(1, len(labels) - 1))]


def txt_records(res: dns.resolver.Resolver, name: str) -> list[str]:
    """The TXT records of `name` ([] when it has none); DNS failures are raised."""
    try:
        answer = res.resolve(name, "TXT", search=False)
    except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
        return []
    return [b"".join(rdata.strings).decode("utf-8", "replace") for rdata in answer]


def lookup(domain: str, servers: list[DnsServer], timeout: float = DEFAULT_TIMEOUT) -> DmarcAnswer:
    try:
        res = resolver(servers, timeout)
        for name in candidates(domain):
            records = [r for r in txt_records(res, f"_dmarc.{name}") if is_dmarc(r)]
            if records:
                return judge(domain, name, records)
    except dns.resolver.NoResolverConfiguration:
        return DmarcAnswer(domain, problem="no DNS resolver is configured here", unreachable=True)
    except dns.resolver.LifetimeTimeout:
        return DmarcAnswer(
            domain, problem=f"DNS did not answer within {timeout:g}s", unreachable=True
        )
    except dns.resolver.NoNameservers as exc:
        return DmarcAnswer(domain, problem=f"DNS failed: {exc}", unreachable=True)
    except dns.exception.DNSException as exc:
        return DmarcAnswer(domain, problem=f"DNS failed: {exc}", unreachable=True)
    return DmarcAnswer(domain, problem=f"no DMARC record at _dmarc.{domain}")


def is_dmarc(text: str) -> bool:
    return text.replace(" ", "").upper().startswith("V=DMARC1")


def judge(domain: str, found_at: str, records: list[str]) -> DmarcAnswer:
    """The answer for the DMARC records of `found_at` (RFC 7489 6.6.3: more than one record
    means none applies)."""
    where = f"_dmarc.{found_at}"
    if len(records) > 1:
        return DmarcAnswer(
            domain, found_at, records[0], problem=f"{where} has {len(records)} DMARC records, "
            "so receivers apply none: keep exactly one",
        )  # fmt: skip
    tags = parse_record(records[0])
    policy = tags.get("p", "").lower()
    if found_at != domain.lower().rstrip("."):
        policy = tags.get("sp", "").lower() or policy
    if policy not in POLICIES:
        return DmarcAnswer(
            domain, found_at, records[0], policy, tags,
            problem=f"{where} has no valid policy (p=none, quarantine or reject): "
            f"{records[0]!r}",
        )  # fmt: skip
    return DmarcAnswer(domain, found_at, records[0], policy, tags)
