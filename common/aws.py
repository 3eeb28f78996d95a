"""boto3 for control-plane calls (GetAccount, GetSendQuota, identity checks): never for sends,
which go through sesflow's own async client with sesflow's own retries."""

from __future__ import annotations

import asyncio
from typing import Any

import boto3
import msgspec
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from sesflow.common.settings import Settings


def boto_session(settings: Settings) -> boto3.Session:
    """Explicit credentials from settings when given, else botocore's own chain."""
    if settings.aws_access_key_id and settings.aws_secret_access_key:
        return boto3.Session(
            aws_access_key_id=settings.aws_access_key_id,
            aws_secret_access_key=settings.aws_secret_access_key,
            aws_session_token=settings.aws_session_token or None,
            region_name=settings.aws_region,
        )
    return boto3.Session(region_name=settings.aws_region)


def boto_client(settings: Settings, service: str, attempts: int = 3) -> Any:
    return boto_session(settings).client(
        service,
        endpoint_url=settings.ses_endpoint_url or None,
        config=Config(
            retries={"max_attempts": attempts, "mode": "standard"},
            connect_timeout=5,
            read_timeout=settings.ses_timeout,
        ),
    )


class Quota(msgspec.Struct, frozen=True, kw_only=True):
    """SES sending limits. max_24h_send is -1 when unlimited."""

    max_send_rate: float
    max_24h_send: float
    sent_last_24h: float
    source: str  # "sesv2:GetAccount" or "ses:GetSendQuota"


def fetch_quota_sync(settings: Settings) -> Quota | None:
    """GetAccount (SESv2), falling back to GetSendQuota (v1); None when SES does not answer."""
    try:
        data = boto_client(settings, "sesv2", attempts=1).get_account()
        quota = data["SendQuota"]
        return Quota(
            max_send_rate=float(quota["MaxSendRate"]),
            max_24h_send=float(quota["Max24HourSend"]),
            sent_last_24h=float(quota["SentLast24Hours"]),
            source="sesv2:GetAccount",
        )
    except (BotoCoreError, ClientError, KeyError, ValueError, NotImplementedError):
        pass
    try:
        data = boto_client(settings, "ses", attempts=1).get_send_quota()
        return Quota(
            max_send_rate=float(data["MaxSendRate"]),
            max_24h_send=float(data["Max24HourSend"]),
            sent_last_24h=float(data["SentLast24Hours"]),
            source="ses:GetSendQuota",
        )
    except (BotoCoreError, ClientError, KeyError, ValueError, NotImplementedError):
        return None


async def fetch_quota(settings: Settings) -> Quota | None:
    return await asyncio.to_thread(fetch_quota_sync, settings)
