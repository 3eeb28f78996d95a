"""SES MessageId -> request id links: which sends need one, and the script calls that write them.

Configuration-set event publishing returns the `sesflow-rid` tag with every event, so its
feedback needs no link. Identity notifications carry no tag (and headers only when the identity
includes them): their feedback is placed through a link written when the mail was sent. The
tracker leaves two marks, `feedback:tagged` and `feedback:untagged`, each renewed while feedback
of that kind arrives (`tracker.feedback_kinds`); with SES_ID_LINKS=auto the sender writes links
unless tagged feedback arrives and untagged feedback does not. A fresh deployment (no mark yet)
writes them, so no feedback is lost while sesflow learns which kind it gets.

Links are fields of small day-bucketed hashes (`common.ses_links`), ~25 bytes each instead of
~120 for a key per mail.
"""

from __future__ import annotations

import time
from typing import Any

from redis.exceptions import RedisError

from sesflow.common.keys import Keys
from sesflow.common.settings import SesIdLinks

CHECK_EVERY_S = 60.0  # how often `auto` reads the tracker's marks


class LinkPolicy:
    """Whether a sent mail gets a link (`common.ses_links` writes them)."""

    def __init__(self, client: Any, keys: Keys, mode: SesIdLinks) -> None:
        self.client = client
        self.keys = keys
        self.mode = mode
        self._wanted = True
        self._checked = float("-inf")

    async def wanted(self) -> bool:
        if self.mode != "auto":
            return self.mode == "always"
        now = time.monotonic()
        if now - self._checked >= CHECK_EVERY_S:
            self._checked = now
            try:
                tagged = await self.client.exists(self.keys.feedback_tagged)
                untagged = await self.client.exists(self.keys.feedback_untagged)
            except RedisError:
                return self._wanted  # keep the last answer; the record path reports outages
            self._wanted = bool(untagged) or not tagged
        return self._wanted
