"""sesflow's own error types. Redis and botocore/HTTP errors are translated into these at the
boundary, so that the rest of the code decides on meaning, not on library classes."""

from __future__ import annotations

from typing import Any


class SesflowError(Exception):
    """Base class of every error sesflow raises on purpose."""


class ConfigError(SesflowError):
    """A setting is missing or invalid; the process cannot start."""


class RedisUnavailable(SesflowError):
    """Redis cannot be reached right now; callers wait and retry (HTTP answers 503)."""


class InputError(SesflowError):
    """Client input is invalid. Carries the HTTP status and the JSON error body; `extra` adds
    structured fields beside `error` and `detail` (say, the recipients a placeholder misses)."""

    def __init__(
        self, error: str, detail: str = "", status: int = 400, extra: dict[str, Any] | None = None
    ) -> None:
        super().__init__(f"{error}: {detail}" if detail else error)
        self.error = error
        self.detail = detail
        self.status = status
        self.extra = extra or {}


# --- SES outcomes, told apart by what sesflow must do about them -----------------------------


class SesError(SesflowError):
    """An SES call did not send the message. `code` is SES's error code when it gave one."""

    def __init__(self, code: str, message: str = "", status: int = 0) -> None:
        super().__init__(f"{code}: {message}" if message else code)
        self.code = code
        self.message = message
        self.status = status


class SesThrottled(SesError):
    """Sending rate exceeded (HTTP 429 / Throttling): retry later, slow the shared bucket."""


class SesQuotaExceeded(SesError):
    """Daily sending quota exhausted: pause until the rolling 24 h window allows more."""


class SesPaused(SesError):
    """Sending paused or account suspended: every sender pauses; nothing fails."""


class SesRejected(SesError):
    """Permanent: this message will never be accepted (MessageRejected, bad address...)."""


class SesSetupFault(SesError):
    """Our setup is broken, not this message: a configuration set that does not exist, an
    unverified sender identity or MAIL FROM domain, an endpoint that is not SES. Sending with
    that setup pauses (shared by every replica) until a probe succeeds; nothing fails.
    `reason` names what is broken: configuration_set, mail_from_domain, identity, endpoint."""

    def __init__(self, code: str, message: str = "", status: int = 0, reason: str = "") -> None:
        super().__init__(code, message, status)
        self.reason = reason or "setup"


class SesTransient(SesError):
    """Certainly not sent (no connection, refused before any processing): safe to retry."""


class SesEntryTransient(SesTransient):
    """One entry of an answered SendBulkEmail call was not processed (TRANSIENT_FAILURE): safe to
    retry, but about that entry, not SES out of reach: its job fails after MAX_ATTEMPTS."""


class SesAmbiguous(SesError):
    """The request may have reached SES and been sent: a 5xx answer, a timeout or a reset after
    the request was written, an unreadable success."""


class ArchiveUnavailable(SesflowError):
    """The archive database cannot be used right now (down, locked, refusing): the archive
    writer waits and retries; a look-up answers 503."""
