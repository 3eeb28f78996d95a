"""sender.personalise and compose's template: what sesflow renders itself (SendEmail) is exactly
what SES makes of the inline template it is given (SendBulkEmail), whatever the user wrote."""

from __future__ import annotations

import json
from collections.abc import Callable

import pytest

from sesflow.common.handlebars import render
from sesflow.common.schema import Job, MessageContent
from sesflow.common.settings import Settings
from sesflow.sender.compose import bulk_request, compose
from sesflow.sender.personalise import CONSTANTS, PartBuilder

SECRET = b"personalise-secret"
TRICKY = [
    "plain",
    "{{name}}",
    "{{{name}}}",
    "{{{{name}}}}",
    r"\{{name}}",
    r"\\{{name}}",
    r"C:\{{name}}\\",
    "{{name}}}",
    "{{name}}}}}",
    "{ {{ {{{ }}}} }",
    "{{ not a placeholder }} {{#if x}}y{{/if}} {{> partial}} {{!comment}}",
    "{{a.b}}{{name}}{{a.b}}",
    "{",
    "\\",
]


@pytest.mark.parametrize("text", TRICKY)
@pytest.mark.parametrize("escape_values", [True, False])
def test_the_ses_source_renders_as_the_local_render(text: str, escape_values: bool) -> None:
    builder = PartBuilder({}, escape_values=escape_values)
    builder.text(text)
    builder.literal("{")
    builder.raw_key("o")
    builder.literal("\\")
    part = builder.build()
    values = {key: f"<{key}>&{{{{x}}}}\\" for key in part.keys}
    assert render(part.source, values | CONSTANTS) == part.render(values)
    assert "{{{{" not in part.source


def test_a_recipients_data_overrides_the_messages_and_missing_names_stay_literal(
    make_settings: Callable[..., Settings],
) -> None:
    settings = make_settings(SERVER_URL="https://t.example")
    content = MessageContent(
        msg_id="1-0",
        topic="t",
        subject="{{greeting}} {{user.name}} {{n}} {{flag}} {{gone}}",
        html="<p>{{user.name}}</p>",
        text="{{greeting}}",
        data=json.dumps({"greeting": "Hello", "user": {"name": "default"}}),
        track_opens=False,
        unsubscribe=False,
    )
    own = json.dumps({"user": {"name": "Ada <3"}, "n": 2.0, "flag": False})
    email = compose(
        settings, SECRET, content, Job(msg_id="1-0", index=0, email="a@x.org", data=own)
    )
    assert email.subject == "Hello Ada <3 2 false {{gone}}"
    assert email.html == "<p>Ada &lt;3</p>"
    assert email.text == "Hello"
    bulk = bulk_request([email])
    data = json.loads(bulk.entries[0].data)
    assert render(bulk.subject, data) == email.subject
    assert render(bulk.html, data) == email.html
    assert render(bulk.text, data) == email.text
    assert "Ada" not in bulk.html and "Ada" not in bulk.subject  # values travel as data only
