from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from sesflow.common.errors import ConfigError
from sesflow.common.keys import Keys, accepted_ms, partition_of, split_request_id
from sesflow.common.settings import load_settings, read_dotenv, settings_from_mapping
from sesflow.common.tracking import Token, sign, verify


def test_older_services_aliases_are_accepted() -> None:
    s = settings_from_mapping(
        {
            "SERVER_PORT": "8080",
            "SERVER_HOST": "http://mail.example.com",
            "AWS_SES_FROM_EMAIL": "a@example.com",
            "MAX_SEND_PER_SECOND": "12",
            "SES_CONFIG_SET": "cs",
        }
    )
    assert s.ingest_port == 8080
    assert s.public_url == "http://mail.example.com"
    assert s.email_sender == "a@example.com"
    assert s.email_rate == 12
    assert s.ses_configuration_set == "cs"


def test_canonical_name_wins_over_alias() -> None:
    s = settings_from_mapping({"EMAIL_RATE": "3", "MAX_SEND_PER_SECOND": "9"})
    assert s.email_rate == 3


def test_invalid_setting_is_a_config_error() -> None:
    with pytest.raises(ConfigError):
        settings_from_mapping({"EMAIL_RATE": "fast"})
    with pytest.raises(ConfigError):
        settings_from_mapping({"ON_AMBIGUOUS": "maybe"})


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"ON_AMBIGUOUS": "maybe"}, "ON_AMBIGUOUS must be one of 'skip', 'resend', not 'maybe'"),
        ({"SEND_MODE": "batch"}, "SEND_MODE must be one of 'bulk', 'single', not 'batch'"),
        ({"SES_CLIENT": "aws"}, "SES_CLIENT must be one of 'native', 'boto3', not 'aws'"),
        ({"LOG_FORMAT": "xml"}, "LOG_FORMAT must be one of 'auto', 'json', 'console', not 'xml'"),
        ({"LOG_LEVEL": "loud"}, "LOG_LEVEL must be one of 'debug', 'info', 'warning', 'warn', "),
        ({"EMAIL_RATE": "fast"}, "invalid setting EMAIL_RATE: Expected `float`, got `str`"),
        # The variable the user set, alias included.
        ({"MAX_SEND_PER_SECOND": "x"}, "invalid setting MAX_SEND_PER_SECOND: Expected `float`"),
    ],
)
def test_a_bad_value_names_the_variable_and_what_it_may_be(
    env: dict[str, str], message: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        settings_from_mapping(env)
    assert str(caught.value).startswith(message)


def test_fixed_choices_ignore_case() -> None:
    s = settings_from_mapping({"LOG_LEVEL": "DEBUG", "SEND_MODE": "Single", "LOG_FORMAT": "JSON"})
    assert (s.log_level, s.send_mode, s.log_format) == ("debug", "single", "json")


def test_dotenv_then_environment(tmp_path: Path) -> None:
    env = tmp_path / ".env"
    env.write_text(
        '# comment\nEMAIL_RATE=5\nexport EMAIL_SENDER="x@example.com"\n'
        "JWT_SECRET=k0123456789abcdef  # c\n"
    )
    assert read_dotenv(env)["JWT_SECRET"] == "k0123456789abcdef"
    s = load_settings({"EMAIL_RATE": "7"}, str(env))
    assert s.email_rate == 7 and s.email_sender == "x@example.com"
    assert s.jwt_secret == "k0123456789abcdef"


def test_keys_share_a_hash_tag_per_partition() -> None:
    keys = Keys("sf", partitions=4)
    p = keys.for_message("1700000000000-0")
    for name in (p.sends, p.schedule, p.state("m"), p.events, p.stats_topic("t"), p.stop("t")):
        assert name.startswith(p.tag + ":")
    assert {partition_of(f"{i}-0", 4) for i in range(100)} == {0, 1, 2, 3}
    assert split_request_id("1700000000000-0_12") == ("1700000000000-0", 12)
    assert split_request_id("42") is None
    assert accepted_ms("1700000000000-3") == 1700000000000


def test_tracking_token_round_trip_and_forgery() -> None:
    secret = b"s3cret"
    text = sign(secret, Token(k="o", r="1-0_1", t="news"))
    assert verify(secret, text) == Token(k="o", r="1-0_1", t="news")
    assert verify(b"other", text) is None
    payload, mac = text.split(".")
    assert verify(secret, payload[:-2] + "xx." + mac) is None
    assert verify(secret, "garbage") is None
    assert verify(secret, "") is None


def test_a_token_reads_exactly_as_mail_sent_before_has_it() -> None:
    """The bytes of a token never change: mail already out carries them for months."""
    token = Token(k="u", r="1796687183367-0_12", t="spring", e="ada@example.com", l="news")
    assert sign(b"k" * 32, token) == (
        "eyJrIjoidSIsInIiOiIxNzk2Njg3MTgzMzY3LTBfMTIiLCJ0Ijoic3ByaW5nIiwiZSI6ImFkYUBleGFtcGxlLmNvbSIs"
        "ImwiOiJuZXdzIn0.oRw8BbA5FYiJLN8jd3NBRA"
    )


async def test_real_redis_is_ours(redis: Any) -> None:
    info = await redis.info("server")
    assert info["tcp_port"] != 6379
    assert await redis.ping()


def test_env_example_lists_every_setting_and_parses() -> None:
    from sesflow.common.settings import Settings, env_names

    example = Path(__file__).resolve().parents[2] / ".env.example"
    names = set(read_dotenv(example))
    for field in Settings.__struct_fields__:
        assert env_names(field)[0] in names, f"{env_names(field)[0]} missing from .env.example"
    # Read by docker-compose.yml from the same file, not by sesflow.
    deploy_only = {"GRAFANA_ADMIN_PASSWORD"}
    known = {env_names(f)[0] for f in Settings.__struct_fields__} | deploy_only
    assert names <= known, f"unknown settings in .env.example: {names - known}"
    assert load_settings({}, str(example)) == Settings()


def test_a_click_is_a_recipient_token_and_a_link_token_of_the_same_message() -> None:
    from sesflow.common.tracking import Token, link_token, sign, verify_click

    secret = b"click-secret"
    url = 'https://a.example/x?y=1&z="2"'
    person = sign(secret, Token(k="o", r="1-0_7", t="news"))
    link = link_token(secret, "1-0", url)
    assert verify_click(secret, f"{person}~{link}") == Token(k="c", r="1-0_7", t="news", u=url)
    # mail sent before: one token for both, still a click
    old = sign(secret, Token(k="c", r="1-0_7", t="news", u=url))
    assert verify_click(secret, old) == Token(k="c", r="1-0_7", t="news", u=url)
    refused = [
        f"{person}~{link_token(secret, '2-0', url)}",  # sealed for another message
        f"{person}~{link_token(b'other', '1-0', url)}",
        f"{sign(secret, Token(k='u', r='1-0_7', e='a@b.c'))}~{link}",  # not a recipient token
        f"{sign(secret, Token(k='o', r='1-0'))}~{link}",  # not a request id
        f"{link}~{person}",
        f"{person}~{person}",
        f"{person}~",
        person,  # a recipient token alone seals no URL
        link,
        f"{old}~{link}",
        "",
        "~",
    ]
    for text in refused:
        assert verify_click(secret, text) is None, text
