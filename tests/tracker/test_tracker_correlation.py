"""`Correlator`: SES MessageId -> request id through the sender's day-bucketed links, the links
older versions wrote, and the feedback-kind marks that tell the sender whether links are needed."""

from __future__ import annotations

import time
from typing import Any

from sesflow.common.day_buckets import DAY_S
from sesflow.common.keys import Keys
from sesflow.common.scripts import register
from sesflow.common.ses_links import link_calls
from sesflow.tracker.correlation import Correlator

KEYS = Keys("sesflow")
MSG = "1732461200000-0"
RETENTION = 14 * DAY_S


async def link(redis: Any, ses_id: str, rid: str, sent_at: float) -> None:
    [(keys, args)] = link_calls(KEYS, [(ses_id, rid)], sent_at, RETENTION, per_key=False)
    assert await register(redis, "ses_links")(keys=keys, args=args) == 1


async def test_a_link_is_found_by_the_mails_send_time_or_by_the_retention(redis: Any) -> None:
    now = time.time()
    await link(redis, "ses-today", f"{MSG}_4", now)
    await link(redis, "ses-old", f"{MSG}_5", now - 3 * DAY_S)
    await link(redis, "ses-late", f"{MSG}_6", now)
    await redis.hset(KEYS.for_message(MSG).message(MSG), "topic", "june")
    c = Correlator(redis, KEYS, RETENTION)
    today = await c.correlate("ses-today", sent_ms=int(now * 1000))
    assert (today.msg_id, today.index, today.topic) == (MSG, 4, "june")
    # no mail.timestamp: every day of the retention is read
    assert (await c.correlate("ses-old")).index == 5
    # SES's clock a little past midnight of the sender's: the neighbouring day is read too
    assert (await c.correlate("ses-late", sent_ms=int((now + DAY_S) * 1000))).index == 6
    # a mail.timestamp far from the sender's clock: every day of the retention is read after
    assert (await c.correlate("ses-old", sent_ms=int((now - 10 * DAY_S) * 1000))).index == 5
    assert (await c.correlate("ses-unknown", sent_ms=int(now * 1000))).msg_id == ""


async def test_a_link_an_older_version_wrote_still_correlates(redis: Any) -> None:
    await redis.set(KEYS.ses_message("ses-before-upgrade"), f"{MSG}_7")
    where = await Correlator(redis, KEYS, RETENTION).correlate("ses-before-upgrade")
    assert (where.msg_id, where.index) == (MSG, 7)


async def test_feedback_kinds_are_marked_for_the_sender(redis: Any) -> None:
    c = Correlator(redis, KEYS, RETENTION)
    await c.correlate("ses-1", rid=f"{MSG}_1")
    assert await redis.exists(KEYS.feedback_tagged) and not await redis.exists(
        KEYS.feedback_untagged
    )
    await c.correlate("ses-2")
    assert 0 < await redis.ttl(KEYS.feedback_untagged) <= RETENTION


async def test_links_of_a_large_batch_spread_over_every_hash_of_the_day(redis: Any) -> None:
    """A record batch may hold more links than one call's 50 (the per-job path, a redelivered
    pending list): they land in up to every bucket of the day, and each is found again."""
    now = time.time()
    links = [(f"ses-{n}", f"{MSG}_{n}") for n in range(3000)]
    [(keys, args)] = link_calls(KEYS, links, now, RETENTION, per_key=False)
    assert len(keys) > 255  # more hashes than one byte could name
    assert await register(redis, "ses_links")(keys=keys, args=args) == len(links)
    c = Correlator(redis, KEYS, RETENTION)
    for n in (0, 1234, 2999):
        assert (await c.correlate(f"ses-{n}", sent_ms=int(now * 1000))).index == n
