"""compose(): pixel, click rewriting, List-Unsubscribe, X-Request-ID, tags, opt-outs."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from sesflow.common.schema import Job, MessageContent
from sesflow.common.settings import Settings
from sesflow.common.tracking import Token, verify, verify_click
from sesflow.sender import compose as compose_module
from sesflow.sender.compose import compose, tag_value

SECRET = b"compose-secret"
PUBLIC = "https://track.example.com"
CLICK = re.compile(r"https://track\.example\.com/v1/events/click\?t=([A-Za-z0-9_.~-]+)")


@pytest.fixture
def settings(make_settings: Callable[..., Settings]) -> Settings:
    return make_settings(SERVER_URL=PUBLIC + "/", EMAIL_SENDER="default@example.com")


def content(html: str, **changes: Any) -> MessageContent:
    fields: dict[str, Any] = {
        "msg_id": "1732461234567-0",
        "topic": "news",
        "subject": "Subject",
        "html": html,
        "track_opens": False,
        "track_clicks": False,
        "unsubscribe": False,
    }
    fields.update(changes)
    return MessageContent(**fields)


JOB = Job(msg_id="1732461234567-0", index=7, email="Reader@Example.org")


def token_of(url: str) -> Token:
    token = verify(SECRET, parse_qs(urlsplit(url).query)["t"][0])
    assert token is not None
    return token


def click_targets(html: str) -> list[str]:
    targets = []
    for match in CLICK.finditer(html):
        token = verify_click(SECRET, match.group(1))
        assert token is not None and token.k == "c" and token.r == "1732461234567-0_7"
        targets.append(token.u)
    return targets


def test_pixel_goes_before_the_closing_body_tag(settings: Settings) -> None:
    html = "<html><body><p>Hi</p></body></html>"
    email = compose(settings, SECRET, content(html, track_opens=True), JOB)
    pixel = re.search(
        r'<img src="([^"]+)" width="1" height="1" alt="" style="display:none">', email.html
    )
    assert pixel is not None
    assert email.html.endswith(pixel.group(0) + "</body></html>")
    assert pixel.group(1).startswith(f"{PUBLIC}/v1/events/open?t=")
    assert token_of(pixel.group(1)) == Token(k="o", r="1732461234567-0_7", t="news")


def test_pixel_is_appended_without_a_body_tag_and_uses_the_last_one(settings: Settings) -> None:
    bare = compose(settings, SECRET, content("<p>Hi</p>", track_opens=True), JOB)
    assert bare.html.startswith("<p>Hi</p><img src=")
    html = "<BODY>x</Body > <p>quoted &lt;/body&gt; in text</p></BODY >"
    twice = compose(settings, SECRET, content(html, track_opens=True, msg_id="2-0"), JOB)
    assert twice.html.endswith('style="display:none"></BODY >')
    assert twice.html.startswith("<BODY>x</Body > <p>")


def test_click_rewrite_handles_quotes_case_bare_values_and_entities(settings: Settings) -> None:
    html = (
        '<a href="https://a.example/x?p=1&amp;q=2" class="b">A</a>'
        "<A HREF='http://b.example/'>B</A>"
        "<a href=https://c.example/c>C</a>"
        '<a title="1 > 0" data-href="https://not.example" href = "https://d.example">D</a>'
        '<a\nclass="x"\nhref="https://e.example/&#x41;">E</a>'
    )
    email = compose(settings, SECRET, content(html, track_clicks=True), JOB)
    assert click_targets(email.html) == [
        "https://a.example/x?p=1&q=2",
        "http://b.example/",
        "https://c.example/c",
        "https://d.example",
        "https://e.example/A",
    ]
    # Everything around the links is untouched.
    assert 'class="b">A</a>' in email.html
    assert email.html.count("<A HREF=") == 1
    assert 'title="1 > 0" data-href="https://not.example" href = "' in email.html
    assert "https://a.example" not in email.html


def test_links_that_must_not_be_tracked_stay_as_they_are(settings: Settings) -> None:
    untouched = (
        '<a href="mailto:x@example.com">m</a>'
        '<a href="#top">t</a>'
        '<a href="tel:+123">p</a>'
        '<a href="/relative">r</a>'
        '<a href="https://shop.example/unsubscribe?id=1">u</a>'
        f'<a href="{PUBLIC}/v1/events/unsubscribe?t=abc">own</a>'
        '<a name="anchor">no href</a>'
        '<!-- <a href="https://in.comment.example">c</a> -->'
        '<area href="https://area.example">'
        '<abbr href="https://abbr.example">'
    )
    email = compose(settings, SECRET, content(untouched, track_clicks=True), JOB)
    assert email.html == untouched


def test_tokens_differ_per_recipient_and_the_template_is_reused(settings: Settings) -> None:
    message = content('<a href="https://a.example">A</a>', track_clicks=True, track_opens=True)
    first = compose(settings, SECRET, message, JOB)
    second = compose(settings, SECRET, message, Job(msg_id=JOB.msg_id, index=8, email="b@x.org"))
    assert first.html != second.html
    assert click_targets(first.html) == ["https://a.example"]
    cached = compose_module._templates[message.msg_id]
    assert compose_module.template_for(message, PUBLIC, SECRET) is cached
    # Same id, other content: rebuilt, never served stale.
    changed = content('<a href="https://b.example">B</a>', track_clicks=True)
    assert click_targets(compose(settings, SECRET, changed, JOB).html) == ["https://b.example"]
    assert compose_module.template_for(message, PUBLIC, SECRET) is not cached


def test_one_token_per_recipient_however_many_links(settings: Settings) -> None:
    """A click URL is `?t=<recipient token>~<link token>`: the link half is signed once per
    message (the same in every recipient's mail), the recipient half is the pixel's token. A
    recipient's own template data is that one token, not one signed URL per link."""
    links = "".join(f'<a href="https://shop.example/item/{n}">{n}</a>' for n in range(40))
    message = content(
        f"<p>{{{{name}}}}</p>{links}", track_clicks=True, track_opens=True, unsubscribe=True
    )
    first = compose(settings, SECRET, message, JOB)
    second = compose(settings, SECRET, message, Job(msg_id=JOB.msg_id, index=8, email="b@x.org"))
    for email, rid in ((first, "1732461234567-0_7"), (second, "1732461234567-0_8")):
        assert set(email.values) == {"v0", "t"}
        pixel = re.search(r'<img src="([^"]+)"', email.html)
        assert pixel is not None
        recipient = parse_qs(urlsplit(pixel.group(1)).query)["t"][0]
        assert verify(SECRET, recipient) == Token(k="o", r=rid, t="news")
        pairs = [m.group(1).split("~") for m in CLICK.finditer(email.html)]
        assert len(pairs) == 40 and all(person == recipient for person, _ in pairs)
        assert [verify(SECRET, link) for _, link in pairs] == [
            Token(k="l", r=JOB.msg_id, u=f"https://shop.example/item/{n}") for n in range(40)
        ]
    assert [m.group(1).split("~")[1] for m in CLICK.finditer(first.html)] == [
        m.group(1).split("~")[1] for m in CLICK.finditer(second.html)
    ]
    # SES gets the link tokens once, in the template; each entry only its own token
    assert first.template_data() == f'{{"v0":"{{{{name}}}}","t":"{first.values["t"]}"}}'


def test_a_link_with_the_recipients_values_gets_its_own_token(settings: Settings) -> None:
    html = '<a href="https://a.example/?u={{uid}}">A</a><a href="https://b.example/">B</a>'
    message = content(html, track_clicks=True, data='{"uid": "u7"}')
    email = compose(settings, SECRET, message, JOB)
    assert click_targets(email.html) == ["https://a.example/?u=u7", "https://b.example/"]
    personal = CLICK.findall(email.html)[0]
    assert "~" not in personal
    assert verify(SECRET, personal) == Token(
        k="c", r="1732461234567-0_7", t="news", u="https://a.example/?u=u7"
    )


def test_unsubscribe_headers_follow_rfc_8058(make_settings: Callable[..., Settings]) -> None:
    settings = make_settings(SERVER_URL=PUBLIC, UNSUBSCRIBE_MAILTO="mailto:unsub@example.com")
    email = compose(settings, SECRET, content("<p>x</p>", unsubscribe=True), JOB)
    headers = dict(email.headers)
    assert headers["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    match = re.fullmatch(
        r"<(https://track\.example\.com/v1/events/unsubscribe\?t=[^>]+)>, "
        r"<mailto:unsub@example\.com\?subject=unsubscribe>",
        headers["List-Unsubscribe"],
    )
    assert match is not None
    assert token_of(match.group(1)) == Token(
        k="u", r="1732461234567-0_7", t="news", e="Reader@Example.org", l="news"
    )


def test_the_unsubscribe_token_seals_the_list_the_message_names(settings: Settings) -> None:
    email = compose(settings, SECRET, content("x", unsubscribe=True, mailing_list="offers"), JOB)
    link = dict(email.headers)["List-Unsubscribe"].strip("<>")
    assert token_of(link).l == "offers"


def test_bulk_mail_carries_a_list_id_of_the_from_domain(settings: Settings) -> None:
    """RFC 2919: `<list.domain>`; the domain is the From address's unless LIST_ID_DOMAIN is set,
    and it goes into each recipient's headers, so every send path (bulk entries, SendEmail,
    raw mail with attachments) carries it."""
    own = content("x", mailing_list="offers", from_email="Shop <deals@Mail.Shop.example>")
    email = compose(settings, SECRET, own, JOB)
    assert ("List-Id", "<offers.mail.shop.example>") in email.own_headers
    assert ("List-Id", "<offers.mail.shop.example>") in email.rendered().headers
    assert dict(compose(settings, SECRET, content("x"), JOB).headers)["List-Id"] == (
        "<news.example.com>"
    )


def test_list_id_domain_setting_and_lanes(make_settings: Callable[..., Settings]) -> None:
    settings = make_settings(LIST_ID_DOMAIN="lists.example.net")
    headers = dict(compose(settings, SECRET, content("x"), JOB).headers)
    assert headers["List-Id"] == "<news.lists.example.net>"  # the topic's list by default
    transactional = compose(settings, SECRET, content("x", lane="transactional"), JOB)
    assert "List-Id" not in dict(transactional.headers)


def test_list_id_yields_to_the_message_and_to_the_ses_header_limit(settings: Settings) -> None:
    own = content("x", headers=(("List-Id", "<mine.example>"),))
    assert [v for n, v in compose(settings, SECRET, own, JOB).headers if n == "List-Id"] == [
        "<mine.example>"
    ]
    full = tuple((f"X-H{n}", "v") for n in range(12))  # 12 custom + 3 of sesflow's = 15
    crowded = compose(settings, SECRET, content("x", unsubscribe=True, headers=full), JOB)
    assert "List-Id" not in dict(crowded.headers) and len(crowded.headers) == 15


def test_unsubscribe_without_mailto(settings: Settings) -> None:
    email = compose(settings, SECRET, content("x", unsubscribe=True), JOB)
    value = dict(email.headers)["List-Unsubscribe"]
    assert value.startswith(f"<{PUBLIC}/v1/events/unsubscribe?t=") and value.endswith(">")
    assert "mailto" not in value


def test_opt_outs_leave_only_the_request_id(settings: Settings) -> None:
    html = '<html><body><a href="https://a.example">A</a></body></html>'
    email = compose(settings, SECRET, content(html), JOB)
    assert email.html == html
    assert email.headers == (
        ("X-Request-ID", "1732461234567-0_7"),
        ("List-Id", "<news.example.com>"),
    )


def test_addressing_tags_and_configuration_set(make_settings: Callable[..., Settings]) -> None:
    settings = make_settings(EMAIL_SENDER="default@example.com", SES_CONFIGURATION_SET="events")
    email = compose(settings, SECRET, content("x", topic="Spring sale/2024 ✓"), JOB)
    assert email.from_email == "default@example.com"
    assert email.to == "Reader@Example.org"
    assert email.subject == "Subject"
    assert email.configuration_set == "events"
    assert email.tags == (
        ("sesflow-rid", "1732461234567-0_7"),
        ("sesflow-topic", "Spring_sale_2024__"),
    )
    override = compose(settings, SECRET, content("x", from_email="News <n@example.com>"), JOB)
    assert override.from_email == "News <n@example.com>"


def test_tag_values_are_sanitised_and_bounded(settings: Settings) -> None:
    assert tag_value("a-b_C9") == "a-b_C9"
    assert tag_value("a.b c@d") == "a_b_c_d"
    assert len(tag_value("x" * 300)) == 256
    no_topic = compose(settings, SECRET, content("x", topic=""), JOB)
    assert dict(no_topic.tags) == {"sesflow-rid": "1732461234567-0_7"}


def test_values_in_a_tracked_link_stay_one_value_of_the_url(settings: Settings) -> None:
    html = '<a href="https://a.example/p/{{path}}?q={{q}}&n={{name}}">A</a>'
    data = '{"path": "a/b", "q": "x&y=1#top", "name": "Zoë Li\\n"}'
    message = content(html, track_clicks=True, data=data)
    email = compose(settings, SECRET, message, JOB)
    assert click_targets(email.html) == [
        "https://a.example/p/a/b?q=x%26y%3D1%23top&n=Zo%C3%AB%20Li%0A"
    ]
