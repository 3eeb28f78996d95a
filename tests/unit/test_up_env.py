"""Operator commands find the embedded services of a `sesflow up` running in the directory."""

from __future__ import annotations

from pathlib import Path

from sesflow.cli.local_env import up_env_file, with_local_redis
from sesflow.cli.up import feedback_line
from sesflow.common.settings import settings_from_mapping


def test_commands_use_the_up_of_this_directory(tmp_path: Path) -> None:
    settings = settings_from_mapping({"SESFLOW_DATA_DIR": str(tmp_path)})
    assert with_local_redis(settings) == settings  # no `up` here: unchanged
    up_env_file(settings).write_text(
        "REDIS_URL=redis://127.0.0.1:41000/0\nSES_ENDPOINT_URL=http://127.0.0.1:41001\n"
        "AWS_ACCESS_KEY_ID=local\nAWS_SECRET_ACCESS_KEY=local\n"
    )
    local = with_local_redis(settings)
    assert local.redis_url == "redis://127.0.0.1:41000/0"
    assert local.ses_endpoint_url == "http://127.0.0.1:41001"
    assert local.aws_access_key_id == "local"


def test_configured_services_win_over_the_local_ones(tmp_path: Path) -> None:
    settings = settings_from_mapping(
        {
            "SESFLOW_DATA_DIR": str(tmp_path),
            "REDIS_URL": "redis://redis.internal:6379/0",
            "AWS_ACCESS_KEY_ID": "AKIA",
            "AWS_SECRET_ACCESS_KEY": "s",
        }
    )
    up_env_file(settings).write_text(
        "REDIS_URL=redis://127.0.0.1:41000/0\nSES_ENDPOINT_URL=http://127.0.0.1:41001\n"
    )
    assert with_local_redis(settings) == settings


def test_up_says_which_sns_topics_the_tracker_accepts() -> None:
    arn = "arn:aws:sns:us-east-1:123456789012:feedback"
    assert arn in feedback_line(settings_from_mapping({"SNS_TOPIC_ARNS": arn}), local_ses=False)
    anyone = feedback_line(settings_from_mapping({"SNS_TOPIC_ARNS": "*"}), local_ses=False)
    assert "anyone" in anyone
    assert "403" in feedback_line(settings_from_mapping({}), local_ses=False)
    assert "local SES" in feedback_line(settings_from_mapping({}), local_ses=True)
