"""Turn a message's stored content and one recipient's job into the email SES sends: the open
pixel, tracked links, List-Unsubscribe headers (RFC 8058), the X-Request-ID header and tags.

Content is the same for every recipient of a message, so the HTML is parsed once per message
into a `Template` (literal pieces with the link and pixel slots between them) and each recipient
only costs one signed token per slot and a join.
"""

from __future__ import annotations

import html
import re
from collections import OrderedDict
from dataclasses import dataclass

from common.addresses import normalise_mailbox
from common.schema import RID_TAG, TOPIC_TAG, Job, MessageContent
from common.settings import Settings
from common.tracking import Token, sign
from sender.ses_client import OutgoingEmail

OPEN_PATH = "/v1/events/open"
CLICK_PATH = "/v1/events/click"
UNSUBSCRIBE_PATH = "/v1/events/unsubscribe"
MAX_TAG_VALUE = 256
TEMPLATE_CACHE_SIZE = 256

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
class Template:
    """HTML as literal pieces; between piece i and i+1 sits slot i: a link target (its click
    URL goes there) or None for the open pixel. len(pieces) == len(slots) + 1."""

    html: str
    track_opens: bool
    track_clicks: bool
    public_url: str
    base: str  # public_url, escaped for an HTML attribute
    pieces: tuple[str, ...]
    slots: tuple[str | None, ...]


def build_template(content: MessageContent, public_url: str) -> Template:
    text = content.html
    pieces: list[str] = []
    slots: list[str | None] = []
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
            pieces.append(text[cursor : match.start() + start])
            slots.append(url)
            cursor = match.start() + end
    if content.track_opens:
        ends = list(_BODY_END.finditer(text, cursor))  # the last </body> wins
        at = ends[-1].start() if ends else len(text)
        pieces.append(text[cursor:at])
        slots.append(None)
        cursor = at
    pieces.append(text[cursor:])
    return Template(
        html=text,
        track_opens=content.track_opens,
        track_clicks=content.track_clicks,
        public_url=public_url,
        base=html.escape(public_url, quote=True),
        pieces=tuple(pieces),
        slots=tuple(slots),
    )


_templates: OrderedDict[str, Template] = OrderedDict()


def template_for(content: MessageContent, public_url: str) -> Template:
    """The message's template, built once per msg_id (a small LRU; a changed content or setting
    under the same id is noticed and rebuilt)."""
    cached = _templates.get(content.msg_id)
    if (
        cached is not None
        and cached.track_opens == content.track_opens
        and cached.track_clicks == content.track_clicks
        and cached.public_url == public_url
        and cached.html == content.html  # identity or memcmp: no parsing
    ):
        _templates.move_to_end(content.msg_id)
        return cached
    template = build_template(content, public_url)
    _templates[content.msg_id] = template
    if len(_templates) > TEMPLATE_CACHE_SIZE:
        _templates.popitem(last=False)
    return template


def render(template: Template, secret: bytes, rid: str, topic: str) -> str:
    if not template.slots:
        return template.html
    base = template.base
    parts = [template.pieces[0]]
    for slot, piece in zip(template.slots, template.pieces[1:], strict=True):
        if slot is None:
            token = sign(secret, Token(k="o", r=rid, t=topic))
            parts.append(
                f'<img src="{base}{OPEN_PATH}?t={token}" width="1" height="1" alt=""'
                ' style="display:none">'
            )
        else:
            token = sign(secret, Token(k="c", r=rid, t=topic, u=slot))
            parts.append(f'"{base}{CLICK_PATH}?t={token}"')
        parts.append(piece)
    return "".join(parts)


def unsubscribe_headers(
    settings: Settings, secret: bytes, rid: str, topic: str, email: str
) -> tuple[tuple[str, str], ...]:
    token = sign(secret, Token(k="u", r=rid, t=topic, e=email))
    value = f"<{settings.public_url}{UNSUBSCRIBE_PATH}?t={token}>"
    mailto = settings.unsubscribe_mailto.strip().removeprefix("mailto:")
    if mailto:
        value += f", <mailto:{mailto}?subject=unsubscribe>"
    return (
        ("List-Unsubscribe", value),
        ("List-Unsubscribe-Post", "List-Unsubscribe=One-Click"),
    )


def sender_of(settings: Settings, content: MessageContent) -> str:
    return normalise_mailbox(content.from_email) if content.from_email else settings.email_sender


def compose(settings: Settings, secret: bytes, content: MessageContent, job: Job) -> OutgoingEmail:
    """The email for one recipient of one message."""
    rid = job.request_id
    topic = content.topic
    headers: tuple[tuple[str, str], ...] = (("X-Request-ID", rid),)
    if content.unsubscribe:
        headers += unsubscribe_headers(settings, secret, rid, topic, job.email)
    tags: tuple[tuple[str, str], ...] = ((RID_TAG, tag_value(rid)),)
    if topic_tag := tag_value(topic):
        tags += ((TOPIC_TAG, topic_tag),)
    template = template_for(content, settings.public_url)
    return OutgoingEmail(
        # Checked again here: content stored by an older version, or written to Redis by hand,
        # must not choose a From that shows one sender and is another (InvalidMailbox: the job
        # is not sent, and is dead-lettered after MAX_ATTEMPTS).
        from_email=sender_of(settings, content),
        to=job.email,
        subject=content.subject,
        html=render(template, secret, rid, topic),
        headers=headers,
        tags=tags,
        configuration_set=settings.ses_configuration_set,
    )
