"""Where a running `sesflow up` leaves its embedded services, so that operator commands run beside
it (in the same directory) find them."""

from __future__ import annotations

from pathlib import Path

import msgspec

from sesflow.common.settings import Settings, read_dotenv


def up_env_file(settings: Settings) -> Path:
    """Where a running `sesflow up` writes the embedded services it started (KEY=VALUE lines)."""
    return Path(settings.data_dir) / "up.env"


def with_local_redis(settings: Settings) -> Settings:
    """Settings for an operator command run beside a `sesflow up` (same directory): its embedded
    Redis when REDIS_URL is unset, and its local SES endpoint when no SES endpoint or AWS keys
    are configured. Unchanged when no `up` runs here."""
    local = read_dotenv(up_env_file(settings))
    changes: dict[str, str] = {}
    if not settings.redis_url and local.get("REDIS_URL"):
        changes["redis_url"] = local["REDIS_URL"]
    if not (settings.ses_endpoint_url or settings.aws_access_key_id) and local.get(
        "SES_ENDPOINT_URL"
    ):
        changes["ses_endpoint_url"] = local["SES_ENDPOINT_URL"]
        changes["aws_access_key_id"] = local.get("AWS_ACCESS_KEY_ID", "")
        changes["aws_secret_access_key"] = local.get("AWS_SECRET_ACCESS_KEY", "")
    return msgspec.structs.replace(settings, **changes) if changes else settings
