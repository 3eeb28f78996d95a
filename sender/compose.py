"""Turn a message's stored content and one recipient's job into the email SES sends: merge
values, the open pixel, tracked links, List-Unsubscribe headers (RFC 8058) whose token seals
the message's mailing list, bulk mail's List-Id (RFC 2919), the X-Request-ID
header and tags.

Content is the same for every recipient of a message, so it is compiled once per message into a
`MessageTemplate`: each part (subject, HTML, text) as literal pieces with per-recipient keys
between them (`sender.personalise`), which is also the inline template SES renders for a bulk
call. Tracking is compiled in too: each tracked link's click URL is literal text in the template
except for the recipient's token (`?t=<recipient>~<link token>`, the link token signed once per
message), and so is the pixel's. A recipient then only costs their values, one signed token (two
with List-Unsubscribe), and either a JSON object (SendBulkEmail's template data) or a join
(SendEmail's Simple content); both give the same mail. A link whose URL holds the recipient's
own values is the exception: it gets a token of its own per recipient (`c<n>`).
"""

from __future__ import annotations

import functools
import html
import re
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

import msgspec

from sesflow.common.addresses import normalise_mailbox, parse_mailbox
from sesflow.common.mailing_lists import list_id
from sesflow.common.merge import MISSING, PLACEHOLDER, as_text, lookup, merged
from sesflow.common.schema import BULK, RID_TAG, TOPIC_TAG, Job, MessageContent
from sesflow.common.settings import Settings
from sesflow.common.tracking import CLICK_SEPARATOR, Token, link_token, sign
from sesflow.sender.personalise import CONSTANTS, Part, PartBuilder
from sesflow.sender.ses_client import Attachment, BulkEmail, BulkEntry, OutgoingEmail

OPEN_PATH = "/v1/events/open"
CLICK_PATH = "/v1/events/click"
UNSUBSCRIBE_PATH = "/v1/events/unsubscribe"
MAX_TAG_VALUE = 256
TEMPLATE_CACHE_SIZE = 256
# SES's limit for an inline template (subject, HTML and text together); a larger message goes
# through SendEmail, one recipient per call.
MAX_TEMPLATE_BYTES = 1_000_000
# The template data key of the recipient's token (the pixel's, and every click URL's first half).
RECIPIENT_KEY = "t"

# A comment (skipped as a whole, so links inside it stay untouched) or an <a> start tag, whose
# quoted attribute values may contain ">".
_COMMENT_OR_ANCHOR = re.compile(
    r"<!--.*?-->|<a(?=[\s/>])(?:[^>\"']|\"[^\"]*\"|'[^']*')*>",
    re.IGNORECASE | re.DOTALL,
)
# One attribute of a start tag: name, then an optional double-quoted, single-quoted or bare value.
_ATTRIBUTE = re.compile(
    r"([^\s\"'>/=]+)(?:\s*=\s*(?:\"([^\"]*)\"|'([^']*)'|([^\s\"'=<>`]+)))?",
)
_BODY_END = re.compile(r"</body\s*>", re.IGNORECASE)
_TAG_UNSAFE = re.compile(r"[^A-Za-z0-9_-]")


def tag_value(text: str) -> str:
    """An SES tag value: only [A-Za-z0-9_-], at most 256 characters."""
    return _TAG_UNSAFE.sub("_", text)[:MAX_TAG_VALUE]


def trackable(url: str, public_url: str) -> bool:
    """http(s) links are tracked, except unsubscribe links (a click must never count as
    interest, and mail clients and scanners follow them) and links to sesflow itself."""
    lowered = url.lower()
    if not lowered.startswith(("http://", "https://")):
        return False
    return "unsubscribe" not in lowered and not url.startswith(public_url + "/v1/events/")


def _href_span(tag: str) -> tuple[int, int, str] | None:
    """(start, end, raw value) of the href value in an <a ...> tag, quotes included in the span."""
    for attr in _ATTRIBUTE.finditer(tag, 2):
        if attr.group(1).lower() != "href":
            continue
        for group in (2, 3, 4):
            if attr.group(group) is not None:
                start, end = attr.span(group)
                if group != 4:  # widen to the quotes
                    start, end = start - 1, end + 1
                return start, end, attr.group(group)
        return None  # `href` without a value
    return None


@dataclass(frozen=True, slots=True)
class MessageTemplate:
    """A message compiled once for all its recipients (see the module doc)."""

    content: MessageContent
    public_url: str
    subject: Part
    html: Part
    text: Part | None  # None: an HTML-only message (stored before text parts existed)
    names: tuple[tuple[str, str], ...]  # (placeholder name, its key v<n>)
    clicks: tuple[str, ...]  # tracked link targets, in order
    personal: tuple[tuple[int, str], ...]  # (n, target) with placeholders: its URL is key c<n>
    recipient_token: bool  # the template uses RECIPIENT_KEY (a pixel or a sealed link)
    # the tracking secret the link tokens are signed with (kept out of any repr or log line)
    secret: bytes = field(repr=False)
    base: str  # public_url, escaped for an HTML attribute
    defaults: Mapping[str, Any]  # the message's merge data
    constants: dict[str, str]  # the literal-brace keys the SES template uses
    headers: tuple[tuple[str, str], ...]  # the message's own headers (same for everyone)
    attachments: tuple[Attachment, ...]
    # Whether SendBulkEmail can carry it: no attachments (SendEmail's Simple content takes them)
    # and an inline template within SES's limit (MAX_TEMPLATE_BYTES).
    bulk_ok: bool

    @property
    def parts(self) -> tuple[Part, ...]:
        return (self.subject, self.html) + ((self.text,) if self.text else ())


def _html_part(
    content: MessageContent, public_url: str, secret: bytes, names: dict[str, str]
) -> tuple[Part, tuple[str, ...]]:
    """The HTML part with its tracking slots: each tracked link's href value and the pixel."""
    text = content.html
    part = PartBuilder(names, escape_values=True)
    base = html.escape(public_url, quote=True)
    clicks: list[str] = []
    cursor = 0
    if content.track_clicks:
        for match in _COMMENT_OR_ANCHOR.finditer(text):
            tag = match.group(0)
            if tag.startswith("<!--"):
                continue
            found = _href_span(tag)
            if found is None:
                continue
            start, end, raw = found
            url = html.unescape(raw).strip()
            if not trackable(url, public_url):
                continue
            part.text(text[cursor : match.start() + start])
            if "{{" in url:  # the recipient's values in the target: a token per recipient
                part.literal('"')
                part.raw_key(f"c{len(clicks)}")
                part.literal('"')
            else:
                part.literal(f'"{base}{CLICK_PATH}?t=')
                part.raw_key(RECIPIENT_KEY)
                sealed = link_token(secret, content.msg_id, url)
                part.literal(f'{CLICK_SEPARATOR}{html.escape(sealed, quote=True)}"')
            clicks.append(url)
            cursor = match.start() + end
    if content.track_opens:
        ends = list(_BODY_END.finditer(text, cursor))  # the last </body> wins
        at = ends[-1].start() if ends else len(text)
        part.text(text[cursor:at])
        part.literal(f'<img src="{base}{OPEN_PATH}?t=')
        part.raw_key(RECIPIENT_KEY)
        part.literal('" width="1" height="1" alt="" style="display:none">')
        cursor = at
    part.text(text[cursor:])
    return part.build(), tuple(clicks)


def _object(raw: str) -> dict[str, Any]:
    """A JSON object of merge data; ingest validated it, anything else counts as none."""
    if not raw:
        return {}
    try:
        value = msgspec.json.decode(raw)
    except msgspec.DecodeError:
        return {}
    return value if isinstance(value, dict) else {}


def _attachments(raw: str) -> tuple[Attachment, ...]:
    if not raw:
        return ()
    return tuple(
        Attachment(
            FileName=str(item["filename"]),
            ContentType=str(item["content_type"]),
            RawContent=str(item["content"]),
        )
        for item in msgspec.json.decode(raw)
    )


def build_template(content: MessageContent, public_url: str, secret: bytes) -> MessageTemplate:
    names: dict[str, str] = {}
    subject = PartBuilder(names, escape_values=False)
    subject.text(content.subject)
    html_part, clicks = _html_part(content, public_url, secret, names)
    text_part = None
    if content.text:
        builder = PartBuilder(names, escape_values=False)
        builder.text(content.text)
        text_part = builder.build()
    subject_part = subject.build()
    used = subject_part.constants | html_part.constants
    size = len(subject_part.source.encode()) + len(html_part.source.encode())
    if text_part is not None:
        used |= text_part.constants
        size += len(text_part.source.encode())
    attachments = _attachments(content.attachments)
    return MessageTemplate(
        content=content,
        public_url=public_url,
        subject=subject_part,
        html=html_part,
        text=text_part,
        names=tuple(names.items()),
        clicks=clicks,
        personal=tuple((n, url) for n, url in enumerate(clicks) if "{{" in url),
        recipient_token=RECIPIENT_KEY in html_part.keys,
        secret=secret,
        base=html.escape(public_url, quote=True),
        defaults=_object(content.data),
        constants={key: CONSTANTS[key] for key in sorted(used)},
        headers=content.headers,
        attachments=attachments,
        bulk_ok=not attachments and size <= MAX_TEMPLATE_BYTES,
    )


_templates: OrderedDict[str, MessageTemplate] = OrderedDict()


def template_for(content: MessageContent, public_url: str, secret: bytes) -> MessageTemplate:
    """The message's template, built once per msg_id (a small LRU; a changed content or setting
    under the same id is noticed and rebuilt)."""
    cached = _templates.get(content.msg_id)
    # identity when the content cache serves the same object, else a field-wise compare
    if (
        cached is not None
        and cached.public_url == public_url
        and cached.secret == secret
        and cached.content == content
    ):
        _templates.move_to_end(content.msg_id)
        return cached
    template = build_template(content, public_url, secret)
    _templates[content.msg_id] = template
    if len(_templates) > TEMPLATE_CACHE_SIZE:
        _templates.popitem(last=False)
    return template


# Left as they are in a value put into a link: RFC 3986's unreserved characters, and the path and
# authority separators a value such as `a/b` or `user@host` is meant to keep.
URL_VALUE_SAFE = "/:@-._~"


def _personal_url(url: str, data: Mapping[str, Any]) -> str:
    """A link target with placeholders in it gets the recipient's values, percent-encoded: a
    value holding `&`, `#`, `?`, a space or a control character stays one value of the URL
    instead of changing its target or making the click unredirectable."""

    def value(match: re.Match[str]) -> str:
        found = lookup(data, match.group(1))
        if found is MISSING or isinstance(found, Mapping):
            return match.group(0)
        return quote(as_text(found), safe=URL_VALUE_SAFE)

    return PLACEHOLDER.sub(value, url)


def merge_values(template: MessageTemplate, own: str) -> tuple[dict[str, str], Mapping[str, Any]]:
    """The recipient's value of every placeholder (key -> text), and their merged data. A name
    that does not resolve (only in messages accepted before merge data was checked) stays as
    its literal placeholder text."""
    data = merged(template.defaults, _object(own)) if own else template.defaults
    values: dict[str, str] = {}
    for name, key in template.names:
        found = lookup(data, name)
        if found is MISSING or found is None or isinstance(found, Mapping):
            values[key] = "{{" + name + "}}"
        else:
            values[key] = as_text(found)
    return values, data


def tracking_values(
    template: MessageTemplate, secret: bytes, rid: str, topic: str, data: Mapping[str, Any]
) -> dict[str, str]:
    """The recipient's token, and the click URL of each link with the recipient's values in it."""
    values: dict[str, str] = {}
    if template.recipient_token:
        values[RECIPIENT_KEY] = sign(secret, Token(k="o", r=rid, t=topic))
    for n, url in template.personal:
        token = sign(secret, Token(k="c", r=rid, t=topic, u=_personal_url(url, data)))
        values[f"c{n}"] = f"{template.base}{CLICK_PATH}?t={token}"
    return values


_data_encoder = msgspec.json.Encoder()


class Email(msgspec.Struct, frozen=True):
    """One recipient's email: the message's template and this recipient's values. It goes out
    either as one entry of a SendBulkEmail call (`template_data`) or, rendered here exactly as
    SES would render it, as a SendEmail (`rendered`)."""

    template: MessageTemplate
    from_email: str
    to: str
    values: dict[str, str]
    own_headers: tuple[tuple[str, str], ...]  # this recipient's: X-Request-ID, List-Unsubscribe
    tags: tuple[tuple[str, str], ...]
    configuration_set: str = ""
    tenant: str = ""

    @property
    def msg_id(self) -> str:
        return self.template.content.msg_id

    @property
    def headers(self) -> tuple[tuple[str, str], ...]:
        return self.own_headers + self.template.headers

    @property
    def reply_to(self) -> tuple[str, ...]:
        return self.template.content.reply_to

    @property
    def subject(self) -> str:
        return self.template.subject.render(self.values)

    @property
    def html(self) -> str:
        return self.template.html.render(self.values)

    @property
    def text(self) -> str:
        return self.template.text.render(self.values) if self.template.text else ""

    def template_data(self) -> str:
        """ReplacementTemplateData: compact JSON of this recipient's keys."""
        data = self.values | self.template.constants if self.template.constants else self.values
        return _data_encoder.encode(data).decode()

    def rendered(self) -> OutgoingEmail:
        return OutgoingEmail(
            from_email=self.from_email,
            to=self.to,
            subject=self.subject,
            html=self.html,
            text=self.text,
            headers=self.headers,
            tags=self.tags,
            configuration_set=self.configuration_set,
            tenant=self.tenant,
            reply_to=self.reply_to,
            attachments=self.template.attachments,
        )


def unsubscribe_headers(
    settings: Settings, secret: bytes, rid: str, topic: str, email: str, list_name: str = ""
) -> tuple[tuple[str, str], ...]:
    """List-Unsubscribe (RFC 8058 one-click): the token seals the list the click leaves."""
    token = sign(secret, Token(k="u", r=rid, t=topic, e=email, l=list_name))
    value = f"<{settings.public_url}{UNSUBSCRIBE_PATH}?t={token}>"
    mailto = settings.unsubscribe_mailto.strip().removeprefix("mailto:")
    if mailto:
        value += f", <mailto:{mailto}?subject=unsubscribe>"
    return (
        ("List-Unsubscribe", value),
        ("List-Unsubscribe-Post", "List-Unsubscribe=One-Click"),
    )


SES_MAX_HEADERS = 15  # SESv2's MessageHeaderList


def wants_list_id(headers: tuple[tuple[str, str], ...], ours: int) -> bool:
    """Whether bulk mail gets sesflow's List-Id: not when the message sets its own (a custom
    header), nor when its custom headers and sesflow's `ours` already fill SES's 15."""
    if any(name.lower() == "list-id" for name, _ in headers):
        return False
    return len(headers) + ours < SES_MAX_HEADERS


@functools.lru_cache(maxsize=TEMPLATE_CACHE_SIZE)
def list_id_of(list_name: str, domain: str, from_email: str) -> str:
    """`List-Id: <list.domain>` (RFC 2919): LIST_ID_DOMAIN, else the From address's domain."""
    return list_id(list_name, domain or parse_mailbox(from_email)[1].rpartition("@")[2])


def sender_of(settings: Settings, content: MessageContent) -> str:
    return checked_sender(content.from_email) if content.from_email else settings.email_sender


@functools.lru_cache(maxsize=TEMPLATE_CACHE_SIZE)
def checked_sender(from_email: str) -> str:
    """The stored From, parsed strictly once per distinct value rather than per recipient (a
    refused one raises InvalidMailbox every time: exceptions are not cached)."""
    return normalise_mailbox(from_email)


def compose(settings: Settings, secret: bytes, content: MessageContent, job: Job) -> Email:
    """The email for one recipient of one message."""
    rid = job.request_id
    topic = content.topic
    headers: tuple[tuple[str, str], ...] = (("X-Request-ID", rid),)
    if content.unsubscribe:
        headers += unsubscribe_headers(settings, secret, rid, topic, job.email, content.list_name)
    from_email = sender_of(settings, content)
    if content.lane == BULK and wants_list_id(content.headers, len(headers)):
        headers += (
            ("List-Id", list_id_of(content.list_name, settings.list_id_domain, from_email)),
        )
    tags: tuple[tuple[str, str], ...] = ((RID_TAG, tag_value(rid)),)
    if topic_tag := tag_value(topic):
        tags += ((TOPIC_TAG, topic_tag),)
    template = template_for(content, settings.public_url, secret)
    values, data = merge_values(template, job.data)
    if template.recipient_token or template.personal:
        values |= tracking_values(template, secret, rid, topic, data)
    return Email(
        template=template,
        # Checked again here: content stored by an older version, or written to Redis by hand,
        # must not choose a From that shows one sender and is another (InvalidMailbox: the job
        # is not sent, and is dead-lettered after MAX_ATTEMPTS).
        from_email=from_email,
        to=job.email,
        values=values,
        own_headers=headers,
        tags=tags,
        # the message's own (checked against the allow-list when it was accepted), else the
        # sender's default
        configuration_set=content.configuration_set or settings.ses_configuration_set,
        tenant=content.tenant,
    )


def bulk_request(emails: list[Email]) -> BulkEmail:
    """One SendBulkEmail call for emails of one message (1 to 50): the message's inline template
    once, each recipient's values, headers and tags per entry."""
    first = emails[0]
    template = first.template
    return BulkEmail(
        from_email=first.from_email,
        subject=template.subject.source,
        html=template.html.source,
        text=template.text.source if template.text else "",
        default_data=_data_encoder.encode(template.constants).decode(),
        headers=template.headers,
        reply_to=first.reply_to,
        configuration_set=first.configuration_set,
        tenant=first.tenant,
        entries=tuple(
            BulkEntry(to=e.to, data=e.template_data(), headers=e.own_headers, tags=e.tags)
            for e in emails
        ),
    )
