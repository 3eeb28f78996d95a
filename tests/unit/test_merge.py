from sesflow.common.merge import as_text, merged, missing, names_in, resolves
from sesflow.common.schema import Job, MessageContent


def test_names_in_finds_each_placeholder_once_in_order() -> None:
    assert names_in("Hi {{first_name}}", "<p>{{ code }} {{first_name}} {{a.b}}</p>") == [
        "first_name",
        "code",
        "a.b",
    ]


def test_other_braces_are_not_placeholders() -> None:
    assert names_in("{{#if x}} {{{raw}}} {{ }} {{a-b}} {x}") == ["raw"]


def test_recipient_data_overrides_the_message_defaults() -> None:
    data = merged({"first_name": "there", "code": "X"}, {"first_name": "Ada"})
    assert data == {"first_name": "Ada", "code": "X"}
    assert missing(["first_name", "code", "user.name"], data) == ["user.name"]


def test_dotted_names_walk_into_objects_and_need_a_value() -> None:
    data = {"user": {"name": "Ada", "extra": {}}, "none": None}
    assert resolves(data, "user.name")
    assert not resolves(data, "user")  # an object is no value
    assert not resolves(data, "user.extra")
    assert not resolves(data, "none")
    assert not resolves(data, "user.name.first")


def test_values_render_as_templates_render_them() -> None:
    assert [as_text(v) for v in (True, False, 3, 2.0, 2.5, "<b>")] == [
        "true",
        "false",
        "3",
        "2",
        "2.5",
        "<b>",
    ]


def test_job_carries_recipient_data_only_when_it_has_some() -> None:
    plain = Job(msg_id="1-0", index=0, email="a@example.com")
    assert "d" not in plain.fields()
    personal = Job(msg_id="1-0", index=1, email="b@example.com", data='{"code":"B2"}')
    assert Job.from_fields(personal.fields()) == personal


def test_content_hash_round_trips_the_complete_message() -> None:
    content = MessageContent(
        msg_id="1-0",
        topic="spring",
        subject="Hi {{first_name}}",
        html="<p>Hi</p>",
        text="Hi",
        data='{"first_name":"there"}',
        reply_to=("help@example.com",),
        headers=(("X-Campaign", "spring"),),
        attachments='[{"filename":"a.txt","content_type":"text/plain","content":"aGk="}]',
    )
    assert MessageContent.from_hash("1-0", content.to_hash()) == content
    old = {"topic": "t", "subject": "s", "html": "h"}
    assert MessageContent.from_hash("1-0", old).reply_to == ()
