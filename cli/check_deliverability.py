"""The findings of `sesflow check` about what mailbox providers require of bulk senders (the
Gmail and Yahoo rules: DKIM and SPF aligned with From, DMARC, one-click unsubscribe) and what
SES needs (production access, sending enabled, feedback published to sesflow):

  DKIM        the From domain's identity signs with DKIM, status SUCCESS (GetEmailIdentity)
  MAIL FROM   a custom MAIL FROM domain in SUCCESS, so SPF aligns with the From domain
  DMARC       a DMARC record on `_dmarc.<domain>` (or a parent's), read from DNS (`cli.dmarc`)
  account     GetAccount: ProductionAccessEnabled, SendingEnabled, EnforcementStatus HEALTHY
  feedback    each configuration set a message may use (`cli.check_sets`) publishes bounces and
              complaints to an SNS topic listed in SNS_TOPIC_ARNS (one
              GetConfigurationSetEventDestinations per set, one finding per set)
  SERVER_URL  https and not this machine: RFC 8058 one-click unsubscribe links need https

A local run is one against the local SES endpoint of `sesflow up` (SES_ENDPOINT_URL with the
`sesflow-local` credentials it hands its roles): nothing is delivered there, so the domain,
account and feedback checks are skipped and SERVER_URL may be http://localhost. Any other
endpoint, a test stub included, is checked as SES.

Every function returns findings and never raises for what SES or DNS answers.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from sesflow.cli.check_sets import CheckedSet, checked_sets
from sesflow.cli.dmarc import DmarcAnswer, DnsServer, lookup
from sesflow.cli.findings import Finding
from sesflow.cli.local_ses import LOCAL_CREDENTIALS
from sesflow.common.addresses import InvalidMailbox, parse_mailbox
from sesflow.common.aws import boto_client
from sesflow.common.settings import ANY_TOPIC, Settings, is_loopback

# What sesflow reads from SES feedback: without the first two the suppression list and the
# reputation guard are blind; without the others some counters stay at 0.
REQUIRED_EVENTS = ("BOUNCE", "COMPLAINT")
USEFUL_EVENTS = ("DELIVERY", "REJECT", "DELIVERY_DELAY")
LOCAL_RUN = "local run (the local SES endpoint of `sesflow up`): nothing is delivered"


@dataclass(frozen=True, slots=True)
class DnsOptions:
    servers: list[DnsServer]
    timeout: float
    skip: bool = False


def is_local_run(settings: Settings) -> bool:
    return bool(settings.ses_endpoint_url) and (
        settings.aws_access_key_id == LOCAL_CREDENTIALS["AWS_ACCESS_KEY_ID"]
    )


def from_domain(settings: Settings) -> str:
    """The domain of EMAIL_SENDER, in ASCII; "" when it is not an address."""
    try:
        return parse_mailbox(settings.email_sender)[1].rpartition("@")[2].lower()
    except InvalidMailbox:
        return ""


def deliverability_findings(settings: Settings, dns: DnsOptions) -> list[Finding]:
    domain = from_domain(settings)
    findings: list[Finding] = []
    if is_local_run(settings):
        findings += [
            Finding(name, "skip", LOCAL_RUN)
            for name in ("DKIM", "MAIL FROM", "DMARC", "account", "feedback")
        ]
    else:
        ses = boto_client(settings, "sesv2", attempts=2)  # one client: each costs ~0.3 s of CPU
        if domain:
            findings += identity_setup_findings(settings, ses, domain)
            findings.append(dmarc_finding(domain, dns))
        else:
            findings += [
                Finding(name, "skip", "EMAIL_SENDER is not an address (see identity)")
                for name in ("DKIM", "MAIL FROM", "DMARC")
            ]
        findings += account_findings(ses)
        findings += feedback_findings(settings, ses)
    findings.append(server_url_finding(settings))
    return findings


# --- DKIM and MAIL FROM ---------------------------------------------------------------------


def error_code(exc: Exception) -> str:
    response = getattr(exc, "response", None) or {}
    return str(response.get("Error", {}).get("Code", ""))


def identity_setup_findings(settings: Settings, ses: Any, domain: str) -> list[Finding]:
    """DKIM and MAIL FROM of the From domain's identity (one GetEmailIdentity)."""
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        reply = ses.get_email_identity(EmailIdentity=domain)
    except ClientError as exc:
        if error_code(exc) == "NotFoundException":
            return no_domain_identity(domain)
        return cannot_read_identity(domain, exc)
    except BotoCoreError as exc:
        return cannot_read_identity(domain, exc)
    return [dkim_finding(domain, reply), mail_from_finding(settings, domain, reply)]


def no_domain_identity(domain: str) -> list[Finding]:
    create = (
        f"`aws sesv2 create-email-identity --email-identity {domain}`, then publish the three "
        "DKIM CNAME records it returns (SES console: Identities > Create identity > Domain)"
    )
    return [
        Finding(
            "DKIM",
            "fail",
            f"{domain} is not an SES identity: SES signs as amazonses.com, which does not align "
            "with the From domain",
            create,
        ),
        Finding("MAIL FROM", "fail", f"needs the domain identity {domain} (see DKIM)", create),
    ]


def cannot_read_identity(domain: str, exc: Exception) -> list[Finding]:
    hint = "allow ses:GetEmailIdentity for these credentials, or look in the SES console"
    return [
        Finding("DKIM", "warn", f"cannot read the identity {domain}: {exc}", hint),
        Finding("MAIL FROM", "warn", f"cannot read the identity {domain}: {exc}", hint),
    ]


def dkim_records(domain: str, attributes: dict[str, Any]) -> str:
    """The CNAME records Easy DKIM waits for (BYODKIM's selector is the operator's own)."""
    if attributes.get("SigningAttributesOrigin") == "EXTERNAL":
        return "the TXT record of your own DKIM key (BYODKIM) at <selector>._domainkey." + domain
    tokens = [str(t) for t in attributes.get("Tokens") or []]
    if not tokens:
        return (
            f"the CNAME records shown by `aws sesv2 get-email-identity --email-identity {domain}`"
        )
    return "; ".join(f"{t}._domainkey.{domain} CNAME {t}.dkim.amazonses.com" for t in tokens)


def dkim_finding(domain: str, reply: dict[str, Any]) -> Finding:
    attributes = reply.get("DkimAttributes") or {}
    status = str(attributes.get("Status") or "NOT_STARTED")
    if status == "SUCCESS" and attributes.get("SigningEnabled", True):
        return Finding("DKIM", "ok", f"{domain}: DKIM SUCCESS, signing")
    if status == "SUCCESS":
        return Finding(
            "DKIM",
            "fail",
            f"{domain}: DKIM records verified but signing is off",
            f"`aws sesv2 put-email-identity-dkim-attributes --email-identity {domain} "
            "--signing-enabled`",
        )
    why = {
        "PENDING": "SES has not found the DKIM records yet",
        "NOT_STARTED": "DKIM verification has not started",
        "TEMPORARY_FAILURE": "SES could not read the DKIM records lately",
        "FAILED": "SES gave up looking for the DKIM records",
    }.get(status, "DKIM is not verified")
    return Finding(
        "DKIM",
        "fail",
        f"{domain}: DKIM {status}: {why}; Gmail and Yahoo want mail signed by the From domain",
        f"publish in DNS: {dkim_records(domain, attributes)}",
    )


def mail_from_records(settings: Settings, mail_from: str) -> str:
    return (
        f"{mail_from} MX 10 feedback-smtp.{settings.aws_region}.amazonses.com; "
        f'{mail_from} TXT "v=spf1 include:amazonses.com ~all"'
    )


def mail_from_finding(settings: Settings, domain: str, reply: dict[str, Any]) -> Finding:
    attributes = reply.get("MailFromAttributes") or {}
    mail_from = str(attributes.get("MailFromDomain") or "")
    status = str(attributes.get("MailFromDomainStatus") or "")
    if not mail_from:
        suggested = f"bounce.{domain}"
        return Finding(
            "MAIL FROM",
            "fail",
            f"{domain} has no custom MAIL FROM domain: SPF passes for amazonses.com, which "
            "does not align with the From domain",
            f"`aws sesv2 put-email-identity-mail-from-attributes --email-identity {domain} "
            f"--mail-from-domain {suggested}`, then publish: "
            + mail_from_records(settings, suggested),
        )
    if status == "SUCCESS":
        return Finding("MAIL FROM", "ok", f"{mail_from} SUCCESS (SPF aligned with {domain})")
    return Finding(
        "MAIL FROM",
        "fail",
        f"{mail_from}: MAIL FROM {status or 'unknown'}: SES has not verified its MX record, so "
        "it sends from amazonses.com (SPF not aligned)",
        "publish: " + mail_from_records(settings, mail_from),
    )


# --- DMARC ------------------------------------------------------------------------------------


def dmarc_hint(domain: str) -> str:
    return (
        f'publish _dmarc.{domain} TXT "v=DMARC1; p=none; rua=mailto:dmarc@{domain}" (p=none is '
        "the minimum Gmail and Yahoo ask; move to quarantine or reject once the reports show "
        "all your mail aligned)"
    )


def dmarc_finding(domain: str, dns: DnsOptions) -> Finding:
    if dns.skip:
        return Finding("DMARC", "skip", "--skip-dns")
    answer = lookup(domain, dns.servers, dns.timeout)
    return judge_dmarc(answer)


def judge_dmarc(answer: DmarcAnswer) -> Finding:
    domain = answer.domain
    if answer.unreachable:
        return Finding(
            "DMARC",
            "warn",
            f"cannot read _dmarc.{domain}: {answer.problem}",
            f"check this machine's DNS (`dig TXT _dmarc.{domain}`), or ask another resolver: "
            "`sesflow check --dns-server 1.1.1.1`",
        )
    if answer.problem:
        return Finding("DMARC", "fail", answer.problem, dmarc_hint(domain))
    where = f"_dmarc.{answer.found_at}"
    inherited = "" if answer.found_at == domain else f" (inherited by {domain})"
    detail = f"p={answer.policy} at {where}{inherited}"
    if answer.policy == "none":
        detail += ": meets the Gmail and Yahoo minimum; quarantine or reject also stop spoofing"
    return Finding("DMARC", "ok", detail)


# --- the account ------------------------------------------------------------------------------

ENFORCEMENT_HINTS = {
    "PROBATION": (
        "the account is under review (bounce or complaint rate): find the cause in the SES "
        "console (Reputation metrics), fix it, and answer the review case in the AWS Support "
        "Center"
    ),
    "SHUTDOWN": "SES has shut down sending: answer the case in the AWS Support Center",
}


def account_findings(ses: Any) -> list[Finding]:
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        reply = ses.get_account()
    except (BotoCoreError, ClientError) as exc:
        return [
            Finding(
                "account",
                "warn",
                f"cannot read GetAccount: {exc}",
                "allow ses:GetAccount for these credentials, or look at the SES console's "
                "Account dashboard",
            )
        ]
    return [
        production_access_finding(reply),
        sending_enabled_finding(reply),
        enforcement_finding(reply),
    ]


def production_access_finding(reply: dict[str, Any]) -> Finding:
    if reply.get("ProductionAccessEnabled"):
        return Finding("production access", "ok", "out of the SES sandbox")
    return Finding(
        "production access",
        "fail",
        "ProductionAccessEnabled is false: in the SES sandbox mail reaches only verified "
        "addresses, 200 a day",
        "SES console: Account dashboard > Request production access (or `aws sesv2 "
        "put-account-details --production-access-enabled --mail-type MARKETING --website-url "
        "https://... --use-case-description '...'`)",
    )


def sending_enabled_finding(reply: dict[str, Any]) -> Finding:
    if reply.get("SendingEnabled", True):
        return Finding("sending", "ok", "SendingEnabled")
    return Finding(
        "sending",
        "fail",
        "SendingEnabled is false: SES refuses every send from this account in this region",
        "`aws sesv2 put-account-sending-attributes --sending-enabled` (when AWS paused it, see "
        "enforcement)",
    )


def enforcement_finding(reply: dict[str, Any]) -> Finding:
    status = str(reply.get("EnforcementStatus") or "HEALTHY")
    if status == "HEALTHY":
        return Finding("enforcement", "ok", "EnforcementStatus HEALTHY")
    return Finding(
        "enforcement",
        "fail",
        f"EnforcementStatus {status}",
        ENFORCEMENT_HINTS.get(status, "see the SES console's Account dashboard"),
    )


# --- SES feedback to sesflow ------------------------------------------------------------------


def destination_command(name: str, topic: str) -> str:
    events = ",".join(f'"{e}"' for e in (*REQUIRED_EVENTS, *USEFUL_EVENTS))
    return (
        f"`aws sesv2 create-configuration-set-event-destination --configuration-set-name {name} "
        f'--event-destination-name sesflow --event-destination \'{{"Enabled":true,'
        f'"MatchingEventTypes":[{events}],"SnsDestination":{{"TopicArn":"{topic}"}}}}\'`'
    )


def topic_listed(settings: Settings, topic: str) -> bool:
    return settings.sns_topic_arns == (ANY_TOPIC,) or topic in settings.sns_topic_arns


def feedback_findings(settings: Settings, ses: Any) -> list[Finding]:
    return [feedback_finding(settings, ses, checked) for checked in checked_sets(settings)]


def feedback_finding(settings: Settings, ses: Any, checked: CheckedSet) -> Finding:
    from botocore.exceptions import BotoCoreError, ClientError

    name = checked.name
    example_topic = (settings.sns_topic_arns or ("arn:aws:sns:REGION:ACCOUNT:ses-feedback",))[0]
    if not name:
        return Finding(
            "feedback",
            "warn",
            "SES_CONFIGURATION_SET is not set: bounces and complaints reach sesflow only if the "
            "identity's own SNS notifications are set up, which this check does not read",
            "create a set that publishes to SNS: `aws sesv2 create-configuration-set "
            "--configuration-set-name sesflow`, then "
            + destination_command("sesflow", example_topic)
            + ", and set SES_CONFIGURATION_SET=sesflow",
        )
    try:
        reply = ses.get_configuration_set_event_destinations(ConfigurationSetName=name)
    except ClientError as exc:
        if error_code(exc) == "NotFoundException":
            return Finding("feedback", "skip", f"needs the configuration set {name!r}")
        return Finding("feedback", "warn", f"cannot read the event destinations of {name}: {exc}")
    except BotoCoreError as exc:
        return Finding("feedback", "warn", f"cannot read the event destinations of {name}: {exc}")
    return judge_destinations(settings, checked, reply.get("EventDestinations") or [])


def judge_destinations(
    settings: Settings, checked: CheckedSet, destinations: list[dict[str, Any]]
) -> Finding:
    name, shown = checked.name, checked.shown
    sns = [
        (str(d["SnsDestination"].get("TopicArn", "")), d)
        for d in destinations
        if d.get("SnsDestination") and d.get("Enabled", False)
    ]
    listed = [(topic, d) for topic, d in sns if topic_listed(settings, topic)]
    if not settings.sns_topic_arns:
        topics = ", ".join(t for t, _ in sns) or "your SES feedback topic"
        return Finding(
            "feedback",
            "fail",
            "SNS_TOPIC_ARNS is not set: the tracker refuses SES feedback (403)"
            + (f" from configuration set {shown}" if checked.several else ""),
            f"set SNS_TOPIC_ARNS={topics}",
        )
    if not listed:
        elsewhere = ", ".join(t for t, _ in sns)
        detail = f"configuration set {shown} publishes no enabled event destination to a topic "
        detail += "in SNS_TOPIC_ARNS" + (f" (it publishes to {elsewhere})" if elsewhere else "")
        hint = (
            f"add {elsewhere} to SNS_TOPIC_ARNS"
            if elsewhere
            else destination_command(name, settings.sns_topic_arns[0])
        )
        return Finding("feedback", "fail", detail, hint)
    published = {str(e) for _, d in listed for e in d.get("MatchingEventTypes") or []}
    topics = ", ".join(sorted({t for t, _ in listed}))
    missing = [e for e in REQUIRED_EVENTS if e not in published]
    if missing:
        return Finding(
            "feedback",
            "fail",
            f"configuration set {shown} does not publish {', '.join(missing)} to {topics}: "
            "bounced and complaining addresses would never be suppressed",
            f"add {', '.join(missing)} to the destination's event types: `aws sesv2 "
            f"update-configuration-set-event-destination --configuration-set-name {name} ...` "
            "(SES console: Configuration sets > Event destinations)",
        )
    absent = [e for e in USEFUL_EVENTS if e not in published]
    detail = f"configuration set {shown} publishes bounces and complaints to {topics}"
    if absent:
        return Finding(
            "feedback",
            "warn",
            f"{detail}, but not {', '.join(absent)}: their counters stay at 0",
            f"add {', '.join(absent)} to the destination's event types (SES console: "
            "Configuration sets > Event destinations)",
        )
    return Finding("feedback", "ok", detail)


# --- SERVER_URL -------------------------------------------------------------------------------


def server_url_finding(settings: Settings) -> Finding:
    url = settings.public_url
    if is_local_run(settings):
        return Finding(
            "SERVER_URL",
            "ok",
            f"{url}: fine for a local run (one-click unsubscribe needs https once mail goes out)",
        )
    parts = urlsplit(url)
    problems = []
    if not settings.server_url:
        problems.append("SERVER_URL is not set")
    if parts.scheme != "https":
        problems.append("not https: one-click unsubscribe (RFC 8058) needs https")
    if is_loopback(parts.hostname or "") or (parts.hostname or "").endswith(".localhost"):
        problems.append("this machine: recipients cannot reach it")
    if not problems:
        return Finding("SERVER_URL", "ok", f"{url} (https)")
    return Finding(
        "SERVER_URL",
        "fail",
        f"{url}: " + "; ".join(problems),
        "serve the tracker behind TLS (a reverse proxy) on a public name and set "
        "SERVER_URL=https://track.your-domain",
    )
