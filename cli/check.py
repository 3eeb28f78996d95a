"""`sesflow check`: is this machine ready to send? Redis, SES credentials, the sender identity,
the SES quota, and what mailbox providers and SES require of a sender
(`cli.check_deliverability`), each with a clear message and the fix when something is wrong."""

from __future__ import annotations

import argparse
import asyncio
from dataclasses import asdict
from email.utils import parseaddr
from typing import Any

from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError, ResponseError
from rich.markup import escape

from sesflow.cli.check_deliverability import DnsOptions, deliverability_findings
from sesflow.cli.check_sets import configuration_set_findings
from sesflow.cli.dmarc import DEFAULT_TIMEOUT, DnsServer
from sesflow.cli.findings import Finding
from sesflow.cli.output import (
    EXIT_FAILED,
    EXIT_OK,
    EXIT_USAGE,
    Formatter,
    console,
    fail,
    operator_settings,
    print_json,
)
from sesflow.cli.stats_report import dead_letter_counts
from sesflow.common.aws import Quota, boto_client, fetch_quota
from sesflow.common.connection import UNAVAILABLE, Redis, connect
from sesflow.common.errors import InputError
from sesflow.common.keys import Keys
from sesflow.common.settings import Settings

DESCRIPTION = """\
Check that sesflow can run here, and say what to fix when it cannot:

  redis      reachable (REDIS_URL, or the Redis of a running `sesflow up`); version 6.2 or later
             (XAUTOCLAIM); maxmemory-policy noeviction (any eviction policy would silently drop
             queued jobs); AOF on (a restart keeps what is queued); dead letters waiting
  credentials  botocore finds AWS credentials (settings, environment, profile, SSO...). The EC2
             instance-metadata and container providers are not asked unless --allow-imds, so
             the check never probes the network on a machine outside AWS
  identity   EMAIL_SENDER (or its domain) is verified in SES, in AWS_REGION
  configuration set  SES_CONFIGURATION_SET, when set, and each set of SES_CONFIGURATION_SETS
             exists in SES (a misspelt one pauses the mail sent through it on its first send)
  quota      SES answers GetAccount / GetSendQuota; EMAIL_RATE within MaxSendRate; room left in
             the 24-hour quota; sandbox accounts

What Gmail's and Yahoo's bulk-sender rules require, and what SES needs, for the domain of
EMAIL_SENDER:
  DKIM       the domain identity signs with DKIM, status SUCCESS
  MAIL FROM  a custom MAIL FROM domain in SUCCESS (SPF aligned with the From domain)
  DMARC      a DMARC record on _dmarc.<domain> (or a parent domain), and its policy, read from
             this machine's DNS or --dns-server
  account    GetAccount: production access (out of the sandbox), SendingEnabled,
             EnforcementStatus HEALTHY
  feedback   SES_CONFIGURATION_SET and each set of SES_CONFIGURATION_SETS publishes BOUNCE and
             COMPLAINT (and DELIVERY, REJECT, DELIVERY_DELAY) to an SNS topic listed in
             SNS_TOPIC_ARNS
  SERVER_URL https and not localhost: one-click unsubscribe (RFC 8058) needs https
Against the local SES endpoint of `sesflow up` (a local run) nothing is delivered: the domain,
account and feedback checks are skipped and SERVER_URL may be http://localhost.

SES_ENDPOINT_URL, when set, is used for the SES checks (a local endpoint or a stub)."""

EPILOG = """\
status: ok, warn (works, but read the hint), fail (fix before sending), skip (not checked
because an earlier check failed or --skip-* was given).

examples:
  sesflow check
  sesflow check --allow-imds           on EC2/ECS/EKS with an instance or task role
  sesflow check --skip-ses --json      only Redis, machine-readable
  sesflow check --dns-server 1.1.1.1   read DMARC through another resolver
  sesflow check --strict && sesflow up

exit status: 0 when nothing failed (with --strict: nothing failed or warned), 1 otherwise."""

MIN_REDIS = (6, 2)


def register(sub: Any) -> None:
    p = sub.add_parser(
        "check",
        help="verify Redis, SES credentials, the sender identity and the quota",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=Formatter,
    )
    p.add_argument(
        "--allow-imds",
        action="store_true",
        help="also look for credentials in EC2 instance metadata and the ECS/EKS container "
        "endpoint (only useful on AWS compute)",
    )
    p.add_argument("--skip-redis", action="store_true", help="do not check Redis")
    p.add_argument(
        "--skip-ses", action="store_true", help="do not check credentials, identity or quota"
    )
    p.add_argument(
        "--dns-server",
        action="append",
        default=[],
        metavar="IP[:PORT]",
        help="ask this DNS server for DMARC records instead of the system's resolver "
        "(repeatable; all on the first one's port)",
    )
    p.add_argument(
        "--dns-timeout",
        type=float,
        default=DEFAULT_TIMEOUT,
        metavar="SECONDS",
        help=f"how long DNS may take to answer (default {DEFAULT_TIMEOUT:g})",
    )
    p.add_argument("--skip-dns", action="store_true", help="do not read DMARC from DNS")
    p.add_argument("--strict", action="store_true", help="exit 1 on warnings too")
    p.add_argument("--json", action="store_true", help="print the findings as JSON")
    p.set_defaults(func=cmd_check)


def dns_options(args: argparse.Namespace) -> DnsOptions:
    try:
        servers = [DnsServer.parse(text) for text in args.dns_server]
    except ValueError as exc:
        raise InputError("invalid_dns_server", f"--dns-server {exc}") from exc
    if args.dns_timeout <= 0:
        raise InputError("invalid_dns_timeout", "--dns-timeout must be positive")
    return DnsOptions(servers, args.dns_timeout, skip=args.skip_dns)


def cmd_check(args: argparse.Namespace) -> int:
    settings = operator_settings()
    try:
        dns = dns_options(args)
    except InputError as exc:
        fail(exc.detail)
        return EXIT_USAGE
    findings: list[Finding] = []
    if args.skip_redis:
        findings.append(Finding("redis", "skip", "--skip-redis"))
    else:
        findings += asyncio.run(check_redis(settings))
    if args.skip_ses:
        findings.append(Finding("SES", "skip", "--skip-ses"))
    else:
        findings += check_ses(settings, allow_imds=args.allow_imds, dns=dns)
    if args.json:
        print_json([asdict(f) for f in findings])
    else:
        render(findings)
    bad = {"fail", "warn"} if args.strict else {"fail"}
    return EXIT_FAILED if any(f.status in bad for f in findings) else EXIT_OK


# --- Redis ----------------------------------------------------------------------------------------


def version_tuple(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in text.split(".")[:3] if part.isdigit())


def server_field(info: Any, name: str) -> Any:
    """A field of INFO, also from a cluster's per-node answer (the first node that has it)."""
    if name in info:
        return info[name]
    for value in info.values():
        if isinstance(value, dict) and name in value:
            return value[name]
    return None


async def check_redis(settings: Settings) -> list[Finding]:
    if not settings.redis_url:
        return [
            Finding(
                "redis",
                "fail",
                f"REDIS_URL is not set and no `sesflow up` is running in this directory "
                f"(no {settings.data_dir}/up.env)",
                "set REDIS_URL=redis://host:6379/0, or start `sesflow up` (embedded Redis)",
            )
        ]
    # No retries: a missing server should be reported within seconds, not after a backoff.
    client = connect(settings, retry=Retry(NoBackoff(), 0), socket_timeout=5.0)
    try:
        return await redis_findings(client, settings)
    finally:
        await client.aclose()


async def redis_findings(client: Redis, settings: Settings) -> list[Finding]:
    where = redact(settings.redis_url)
    try:
        await client.ping()
    except (*UNAVAILABLE, RedisError) as exc:
        return [
            Finding(
                "redis",
                "fail",
                f"no answer from {where}: {exc}",
                "is Redis running and reachable from here? Are the host, port and password "
                "in REDIS_URL right (rediss:// for TLS)?",
            )
        ]
    findings = [Finding("redis", "ok", f"{where} answers")]
    version = str(server_field(await client.info("server"), "redis_version") or "")
    if version_tuple(version) >= MIN_REDIS:
        findings.append(Finding("redis version", "ok", version))
    else:
        findings.append(
            Finding(
                "redis version",
                "fail",
                f"{version or 'unknown'}: sesflow needs 6.2 or later (XAUTOCLAIM)",
                "upgrade Redis (Debian's redis-server is 7.x; `sesflow up` embeds 6.2+)",
            )
        )
    findings.append(await eviction_finding(client))
    aof = server_field(await client.info("persistence"), "aof_enabled")
    if str(aof) == "1":
        findings.append(Finding("redis AOF", "ok", "appendonly yes"))
    else:
        findings.append(
            Finding(
                "redis AOF",
                "warn",
                "AOF is off: a Redis restart loses what was queued since the last snapshot",
                "set `appendonly yes` (CONFIG SET appendonly yes, and in redis.conf)",
            )
        )
    dead = await dead_letter_counts(client, Keys(settings.redis_prefix, settings.send_partitions))
    waiting = {name: n for name, n in dead.items() if n}
    if waiting:
        findings.append(
            Finding(
                "dead letters",
                "warn",
                ", ".join(f"{name} {n:,}" for name, n in waiting.items()),
                "`sesflow dlq list` shows why; `sesflow dlq replay` retries them",
            )
        )
    else:
        findings.append(Finding("dead letters", "ok", "none"))
    return findings


async def eviction_finding(client: Redis) -> Finding:
    try:
        reply = await client.config_get("maxmemory-policy")
    except ResponseError as exc:
        return Finding(
            "redis eviction",
            "warn",
            f"cannot read maxmemory-policy ({exc})",
            "CONFIG is disabled (usual on managed Redis): make sure the parameter group sets "
            "maxmemory-policy to noeviction",
        )
    policy = str(server_field(reply, "maxmemory-policy") or "")
    if policy == "noeviction":
        return Finding("redis eviction", "ok", "maxmemory-policy noeviction")
    return Finding(
        "redis eviction",
        "warn",
        f"maxmemory-policy is {policy or 'unknown'}: under memory pressure Redis would drop "
        "keys, which silently loses queued jobs and delivery states",
        "CONFIG SET maxmemory-policy noeviction (and in redis.conf / the parameter group)",
    )


def redact(url: str) -> str:
    """The URL without its password."""
    scheme, sep, rest = url.partition("://")
    if sep and "@" in rest:
        rest = "***@" + rest.rsplit("@", 1)[1]
    return f"{scheme}{sep}{rest}"


# --- SES ----------------------------------------------------------------------------------------


def find_credentials(settings: Settings, allow_imds: bool) -> tuple[Any, str]:
    """botocore's credentials and where they came from; (None, "") when there are none."""
    if settings.aws_access_key_id and settings.aws_secret_access_key:
        return object(), "settings (AWS_ACCESS_KEY_ID)"
    import botocore.session

    resolver = botocore.session.get_session().get_component("credential_provider")
    if not allow_imds:
        for provider in ("iam-role", "container-role"):
            resolver.remove(provider)
    credentials = resolver.load_credentials()
    if credentials is None:
        return None, ""
    return credentials, str(getattr(credentials, "method", "") or "botocore")


def check_ses(settings: Settings, allow_imds: bool, dns: DnsOptions) -> list[Finding]:
    where = settings.ses_endpoint_url or f"AWS {settings.aws_region}"
    credentials, source = find_credentials(settings, allow_imds)
    if credentials is None:
        hint = (
            "set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or AWS_PROFILE (a profile in "
            "~/.aws), or log in with `aws sso login`"
        )
        if not allow_imds:
            hint += "; on EC2/ECS/EKS with a role, run `sesflow check --allow-imds`"
        if settings.ses_endpoint_url:
            hint += "; a local endpoint accepts any key pair"
        return [
            Finding("credentials", "fail", "no AWS credentials found", hint),
            Finding("identity", "skip", "needs credentials"),
            Finding("configuration set", "skip", "needs credentials"),
            Finding("quota", "skip", "needs credentials"),
            Finding("deliverability", "skip", "needs credentials"),
        ]
    findings = [Finding("credentials", "ok", f"from {source}, SES at {where}")]
    findings.append(identity_finding(settings))
    findings += configuration_set_findings(settings)
    findings += quota_findings(settings, asyncio.run(fetch_quota(settings)))
    findings += deliverability_findings(settings, dns)
    return findings


def identity_status(settings: Settings, identities: list[str]) -> dict[str, str]:
    """identity -> "verified" | "pending" | "failed" | "absent", asking SESv2 and then SES v1
    for any it does not call verified. Raises the last API error when neither answers."""
    from botocore.exceptions import BotoCoreError, ClientError
    from botocore.parsers import ResponseParserError

    status, error = sesv2_status(settings, identities)
    missing = [i for i in identities if status.get(i) != "verified"]
    if missing:
        try:
            status.update(ses_v1_status(settings, missing))
        # an endpoint that speaks only SESv2 (a stub, a proxy) answers v1 with something else
        except (BotoCoreError, ClientError, ResponseParserError) as exc:
            if not status:
                raise exc from error
    return {i: status.get(i, "absent") for i in identities}


def sesv2_status(
    settings: Settings, identities: list[str]
) -> tuple[dict[str, str], Exception | None]:
    """What SESv2 says of each identity it answers for, and the last error it gave."""
    from botocore.exceptions import BotoCoreError, ClientError

    status: dict[str, str] = {}
    error: Exception | None = None
    v2 = boto_client(settings, "sesv2", attempts=2)
    for identity in identities:
        try:
            reply = v2.get_email_identity(EmailIdentity=identity)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") == "NotFoundException":
                status[identity] = "absent"
            else:
                error = exc
            continue
        except BotoCoreError as exc:
            error = exc
            continue
        status[identity] = sesv2_verification(reply)
    return status, error


def sesv2_verification(reply: dict[str, Any]) -> str:
    if reply.get("VerifiedForSendingStatus"):
        return "verified"
    state = str(reply.get("VerificationStatus") or "PENDING").lower()
    return "failed" if state == "failed" else "pending"


def ses_v1_status(settings: Settings, identities: list[str]) -> dict[str, str]:
    """What SES v1 says of the identities it knows (API errors are raised)."""
    v1 = boto_client(settings, "ses", attempts=2)
    attributes = v1.get_identity_verification_attributes(Identities=identities)
    status: dict[str, str] = {}
    for identity, attrs in attributes.get("VerificationAttributes", {}).items():
        state = str(attrs.get("VerificationStatus", "")).lower()
        if state == "success":
            status[identity] = "verified"
        elif state in {"pending", "failed"}:
            status[identity] = state
    return status


def identity_finding(settings: Settings) -> Finding:
    from botocore.exceptions import BotoCoreError, ClientError

    address = parseaddr(settings.email_sender)[1]
    if "@" not in address:
        return Finding(
            "identity",
            "fail",
            f"EMAIL_SENDER {settings.email_sender!r} is not an email address",
            "set EMAIL_SENDER (alias AWS_SES_FROM_EMAIL) to a verified address",
        )
    domain = address.rsplit("@", 1)[1]
    try:
        status = identity_status(settings, [address, domain])
    except (BotoCoreError, ClientError) as exc:
        return Finding(
            "identity",
            "warn",
            f"cannot ask SES whether {address} is verified: {exc}",
            "allow ses:GetEmailIdentity (or ses:GetIdentityVerificationAttributes) for these "
            "credentials, or check in the SES console",
        )
    verified = [i for i in (address, domain) if status[i] == "verified"]
    if verified:
        return Finding("identity", "ok", f"{address}: {' and '.join(verified)} verified")
    pending = [i for i in (address, domain) if status[i] == "pending"]
    if pending:
        return Finding(
            "identity",
            "fail",
            f"{address}: verification of {' and '.join(pending)} is pending",
            "click the link SES emailed to the address, or publish the domain's DKIM records",
        )
    return Finding(
        "identity",
        "fail",
        f"neither {address} nor {domain} is verified in SES ({settings.aws_region})",
        f"verify one: `aws sesv2 create-email-identity --email-identity {domain}` (then its DNS "
        "records), or the SES console; check AWS_REGION too",
    )


def quota_findings(settings: Settings, quota: Quota | None) -> list[Finding]:
    if quota is None:
        return [
            Finding(
                "quota",
                "fail",
                "SES answered neither GetAccount nor GetSendQuota",
                "check AWS_REGION, SES_ENDPOINT_URL, the network, and that the credentials may "
                "call ses:GetAccount or ses:GetSendQuota",
            )
        ]
    daily = "unlimited" if quota.max_24h_send < 0 else f"{quota.max_24h_send:,.0f}"
    findings = [
        Finding(
            "quota",
            "ok",
            f"MaxSendRate {quota.max_send_rate:g}/s, Max24HourSend {daily}, "
            f"SentLast24Hours {quota.sent_last_24h:,.0f} ({quota.source})",
        )
    ]
    if settings.email_rate > quota.max_send_rate:
        findings.append(
            Finding(
                "rate",
                "warn",
                f"EMAIL_RATE {settings.email_rate:g}/s is above SES's MaxSendRate "
                f"{quota.max_send_rate:g}/s: senders will use {quota.max_send_rate:g}/s",
                f"set EMAIL_RATE={quota.max_send_rate:g}, or ask AWS for a higher sending rate",
            )
        )
    else:
        findings.append(
            Finding("rate", "ok", f"EMAIL_RATE {settings.email_rate:g}/s within MaxSendRate")
        )
    if 0 <= quota.max_24h_send <= quota.sent_last_24h:
        findings.append(
            Finding(
                "daily quota",
                "warn",
                "the 24-hour quota is used up: sending pauses until the window allows more",
                "wait, or ask AWS for a higher daily quota",
            )
        )
    elif quota.max_24h_send >= 0 and quota.sent_last_24h >= 0.9 * quota.max_24h_send:
        findings.append(
            Finding(
                "daily quota",
                "warn",
                f"{quota.sent_last_24h / quota.max_24h_send:.0%} of the 24-hour quota is used",
                "large campaigns will pause until the rolling window allows more",
            )
        )
    # GetAccount says so itself (ProductionAccessEnabled, see `production access`)
    sandboxed = 0 <= quota.max_24h_send <= 200 and quota.max_send_rate <= 1
    if sandboxed and quota.source != "sesv2:GetAccount":
        findings.append(
            Finding(
                "sandbox",
                "warn",
                "this looks like an SES sandbox account (200 a day, 1/s)",
                "in the sandbox only verified recipients receive mail; request production "
                "access in the SES console",
            )
        )
    return findings


# --- output ---------------------------------------------------------------------------------------

STYLES = {"ok": "green", "warn": "yellow", "fail": "bold red", "skip": "dim"}
CHECK_WIDTH = 18


def render(findings: list[Finding]) -> None:
    """One line per finding (status, check, detail), the fix on the line under a problem.
    Lines are never wrapped: a pipe or a log keeps each finding whole."""
    out = console()
    out.print("[bold]sesflow check[/]")
    for f in findings:
        style = STYLES.get(f.status, "")
        out.print(
            f"[{style}]{f.status:<4}[/] {f.check:<{CHECK_WIDTH}} {escape(f.detail)}",
            soft_wrap=True,
        )
        if f.hint and f.status in {"fail", "warn"}:
            out.print(f"     {'':<{CHECK_WIDTH}} fix: {escape(f.hint)}", soft_wrap=True)
    failed = sum(f.status == "fail" for f in findings)
    warned = sum(f.status == "warn" for f in findings)
    out.print(
        "ready to send" if not failed else f"{failed} check(s) failed",
        f"({warned} warning(s))" if warned else "",
    )
