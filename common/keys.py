"""Every Redis key, stream and consumer-group name sesflow uses is built here and nowhere else.

Layout (prefix `sesflow` by default):

    {sesflow:g}:requests              stream of message requests (group `dispatch`)
    {sesflow:g}:requests:dead         requests that failed validation, with the reason
    {sesflow:g}:idem:<key>            Idempotency-Key answers for POST /v1/messages
    {sesflow:g}:template:<name>       hash: a stored template's versions ("<n>" -> JSON), with
                                      `version` (current n), `current` (its JSON), `updated_ms`
    {sesflow:g}:templates             zset: template names (score 0, in name order)
    {sesflow:rate}                    the one shared rate limiter (hash)
    {sesflow:sup}:suppressed          suppression list (hash email -> JSON reason)
    {sesflow:sup}:unsubscribed        list unsubscribes (hash email -> JSON {list: entry})
    {sesflow:sup}:ses-sync            held by the one sender importing SES's suppression list
    sesflow:softbounce:<email>        zset: the address's recent soft bounces, SES MessageId ->
                                      bounce time (ms); at most SOFT_BOUNCE_LIMIT members, expires
                                      SOFT_BOUNCE_WINDOW after the last one
    sesflow:sesid:<SES MessageId>     SES MessageId -> request id (earlier versions; still read)
    sesflow:sesids:<day>:<n>          hash: 8-byte digest of an SES MessageId -> request id, for
                                      feedback that carries no tag (identity notifications);
                                      day = UTC day of the send, n = digest bucket (listpack-small
                                      hashes); expires CONTENT_TTL after its day
    sesflow:feedback:tagged           set while SES feedback carrying our tag arrives
    sesflow:feedback:untagged         set while SES feedback without it arrives (see `ses_links`)
    sesflow:secret                    generated tracking secret when TRACKING_SECRET is unset
    sesflow:setup:paused              hash: paused SES setup (scope) -> JSON of its first fault
    sesflow:setup:probe:<scope>       held by the one sender probing a paused setup (PX interval)
    sesflow:setup:seen:<scope>        renewed by each fault of a paused setup; gone = stale pause
    {sesflow:wh}:endpoints            hash: webhook endpoint id -> JSON (url, events, secrets...)
    {sesflow:wh}:failing              hash: webhook endpoint id -> first failure (ms) since its
                                      last success (5 days of it disables the endpoint)

and per send partition N (SEND_PARTITIONS, default 1), everything a Lua script or a MULTI touches
together shares the hash tag `{sesflow:N}` so the same code runs on Redis Cluster. With several
partitions, partition N's tag lies in the N-th equal slice of the 16384 cluster slots (when
`{sesflow:N}` does not, it is `{sesflow:N.k}` with the smallest k that does, see
`partition_tag`), so partitions spread over the masters of a cluster instead of landing on one:

    {sesflow:N}:sends                 one entry per recipient job (group `senders`)
    {sesflow:N}:sends:dead            jobs that exhausted MAX_ATTEMPTS or are malformed
    {sesflow:N}:schedule              zset: scheduled chunk -> due time (ms)
    {sesflow:N}:schedule:data         hash: scheduled chunk -> recipients
    {sesflow:N}:schedule:topic:<t>    set: scheduled chunks of one topic (for cancel)
    {sesflow:N}:msg:<msg_id>          hash: the message content, stored once
    {sesflow:N}:state:<msg_id>        hash: recipient index -> in-flight claim (only while in
                                      flight; older versions kept final states here too: read)
    {sesflow:N}:final:<msg_id>        string: one byte per recipient index, its final state
                                      (0 = not final; see `sender.state.DeliveryState`)
    {sesflow:N}:opens:<msg_id>        hash: recipient index -> first open (older versions; read)
    {sesflow:N}:touch:<msg_id>        string: 4 bits per recipient index, its first open /
                                      click / unsubscribe (unique opens and clicks)
    {sesflow:N}:sns:<MessageId>       SNS deliveries recorded into this partition (dedupe; older
                                      versions; read)
    {sesflow:N}:snsd:<day>:<n>        hash: 8-byte digest of an SNS MessageId -> "" (dedupe), by
                                      UTC day and digest bucket
    {sesflow:N}:stop:<topic>          time (ms) the topic was cancelled
    {sesflow:N}:transactional         list: transactional jobs waiting for the pump, a line each
    {sesflow:N}:backlog:<topic>       list: the topic's bulk jobs waiting for the pump, a line each
    {sesflow:N}:backlog:topics        zset: topics with a bulk backlog, not paused -> virtual time
    {sesflow:N}:backlog:weights       hash: topic -> its weight in the fair share (when not 1)
    {sesflow:N}:paused                hash: paused topic (or "": all bulk) -> JSON reason and time
    {sesflow:N}:pump                  hash: the pump's own state (its transactional credit, and
                                      the allowance of transactional jobs that skip it)
    {sesflow:N}:events                every event (groups `stats`, and `archive` and `webhooks`
                                      when ARCHIVE and WEBHOOKS are on)
    {sesflow:N}:events:dead           events stats could not decode (or the archive not store)
    {sesflow:N}:parked:<scope>        list: jobs parked while their SES setup `scope` is paused,
                                      a backlog line each (`sender.parking`)
    {sesflow:N}:parked                set: the scopes with parked jobs in this partition
    {sesflow:N}:stats:topic:<t>       counters of one topic
    {sesflow:N}:stats:global          counters of everything
    {sesflow:N}:stats:hourly          hash: "<type>:<YYYYMMDDHH>" -> count
    {sesflow:N}:stats:minutely        hash: "<type>:<epoch minute>" -> count (time series)
    {sesflow:N}:stats:series:<t>      hash: "<type>:<epoch minute>" -> count, one topic
    {sesflow:N}:stats:topics          zset: topic -> last activity (ms)
    {sesflow:N}:stats:seconds:<m>     hash: "<epoch second>" -> `sent` count, the seconds of epoch
                                      minute m; expires 15 minutes after m (the live send rate)
    {sesflow:N}:stats:seconds:<m>:<t> the same for one topic (its share of the rate, its ETA)
    {sesflow:N}:wh:due                zset: webhook delivery id -> when it is next due (ms); a
                                      claimed delivery's score is the end of its lease
    {sesflow:N}:wh:deliveries         hash: webhook delivery id -> JSON (endpoint, body, tries)
    {sesflow:N}:wh:backlog            hash: webhook endpoint id -> deliveries waiting
    {sesflow:N}:wh:dead               stream: webhook deliveries that failed for WEBHOOK_RETRY_FOR

The webhook queue of a partition shares its tag with `events`, so the fan-out enqueues a batch's
deliveries and XACKs its entries in one MULTI/EXEC. A delivery id is
`<zero-padded events entry id>.<endpoint id>`: ordered like the events, and naming its endpoint.

A message id is the ID of its entry on `requests`; a request id (one recipient) is
`<msg_id>_<index>` (only characters SES allows in a message tag value). The partition of a
message is a hash of its message id.
"""

from __future__ import annotations

import functools
import zlib
from dataclasses import dataclass

from redis.crc import REDIS_CLUSTER_HASH_SLOTS, key_slot

DISPATCH_GROUP = "dispatch"
SENDERS_GROUP = "senders"
STATS_GROUP = "stats"
WEBHOOKS_GROUP = "webhooks"
ARCHIVE_GROUP = "archive"  # the history archive's writer, in the stats process (ARCHIVE=on)


def partition_of(msg_id: str, partitions: int) -> int:
    if partitions <= 1:
        return 0
    return zlib.crc32(msg_id.encode()) % partitions


MAX_SPREAD_PARTITIONS = 1024  # above this, plain tags: the search would cost too much at startup


@functools.cache
def partition_tag(prefix: str, index: int, partitions: int) -> str:
    """The hash tag of partition `index` of `partitions`: `{prefix:index}` when its cluster slot
    lies in the index-th of `partitions` equal slices of the slot space, else `{prefix:index.k}`
    for the smallest k whose slot does. Plain crc16 puts, e.g., `{sesflow:0}` and `{sesflow:1}`
    on the same master of a 3-master cluster; slices follow how `redis-cli --cluster create`
    splits slots, so N partitions on N masters get one each. One partition is `{prefix:0}`."""
    name = f"{prefix}:{index}"
    if partitions <= 1 or partitions > MAX_SPREAD_PARTITIONS:
        return f"{{{name}}}"
    low = index * REDIS_CLUSTER_HASH_SLOTS // partitions
    high = (index + 1) * REDIS_CLUSTER_HASH_SLOTS // partitions
    candidate, k = name, 0
    while not low <= key_slot(candidate.encode()) < high:
        k += 1
        candidate = f"{name}.{k}"
    return f"{{{candidate}}}"


# Topic ids whose bulk backlog would be the key of the pump's own set of topics or of their
# weights (`backlog:topics`, `backlog:weights`): a message of such a topic would turn that key
# into a list and stop the partition's pump.
RESERVED_TOPICS = frozenset({"topics", "weights"})


@dataclass(frozen=True, slots=True)
class PartitionKeys:
    """The keys of one send partition; all of them share one hash tag."""

    index: int
    tag: str

    @property
    def sends(self) -> str:
        return f"{self.tag}:sends"

    @property
    def sends_dead(self) -> str:
        return f"{self.tag}:sends:dead"

    @property
    def schedule(self) -> str:
        return f"{self.tag}:schedule"

    @property
    def schedule_data(self) -> str:
        return f"{self.tag}:schedule:data"

    def schedule_topic(self, topic: str) -> str:
        return f"{self.tag}:schedule:topic:{topic}"

    def message(self, msg_id: str) -> str:
        return f"{self.tag}:msg:{msg_id}"

    def state(self, msg_id: str) -> str:
        return f"{self.tag}:state:{msg_id}"

    def finals(self, msg_id: str) -> str:
        """One byte per recipient index: its final state (`sender.state`)."""
        return f"{self.tag}:final:{msg_id}"

    def opens(self, msg_id: str) -> str:
        """First touches as older versions wrote them (a hash); read, no longer written."""
        return f"{self.tag}:opens:{msg_id}"

    def touches(self, msg_id: str) -> str:
        """First touches, 4 bits per recipient index (`tracker.recorder`)."""
        return f"{self.tag}:touch:{msg_id}"

    def stop(self, topic: str) -> str:
        return f"{self.tag}:stop:{topic}"

    @property
    def prefix(self) -> str:
        """What a Lua script prepends to build a key of this partition it learns only as it
        runs (a backlog, a content hash); the hash tag keeps it on the script's slot."""
        return f"{self.tag}:"

    @property
    def transactional(self) -> str:
        return f"{self.tag}:transactional"

    def backlog(self, topic: str) -> str:
        """A topic's bulk backlog; never one of RESERVED_TOPICS (ingest refuses them)."""
        return f"{self.tag}:backlog:{topic}"

    @property
    def backlog_topics(self) -> str:
        return f"{self.tag}:backlog:topics"

    @property
    def backlog_weights(self) -> str:
        return f"{self.tag}:backlog:weights"

    @property
    def paused(self) -> str:
        return f"{self.tag}:paused"

    @property
    def pump(self) -> str:
        return f"{self.tag}:pump"

    def parked(self, scope: str) -> str:
        return f"{self.tag}:parked:{scope}"

    @property
    def parked_scopes(self) -> str:
        return f"{self.tag}:parked"

    # --- the KEYS of each script that takes a partition's keys, in the order of its header ---

    def park_keys(self, scope: str) -> list[str]:
        return [self.sends, self.parked(scope), self.parked_scopes]

    def unpark_keys(self, scope: str) -> list[str]:
        return [
            self.parked(scope),
            self.parked_scopes,
            self.transactional,
            self.backlog_topics,
            self.paused,
            self.backlog_weights,
        ]

    def dispatch_keys(self, msg_id: str, topic: str) -> list[str]:
        return [
            self.message(msg_id),
            self.sends,
            self.schedule,
            self.schedule_data,
            self.schedule_topic(topic),
            self.stop(topic),
            self.events,
            self.backlog(topic),
            self.backlog_topics,
            self.paused,
            self.backlog_weights,
            self.transactional,
            self.pump,
        ]

    def promote_keys(self) -> list[str]:
        return [
            self.schedule,
            self.schedule_data,
            self.sends,
            self.backlog_topics,
            self.paused,
            self.backlog_weights,
            self.transactional,
        ]

    def cancel_keys(self, topic: str) -> list[str]:
        return [
            self.schedule,
            self.schedule_data,
            self.schedule_topic(topic),
            self.stop(topic),
            self.events,
            self.backlog(topic),
            self.backlog_topics,
            self.backlog_weights,
        ]

    def pump_keys(self) -> list[str]:
        return [
            self.sends,
            self.backlog_topics,
            self.paused,
            self.backlog_weights,
            self.transactional,
            self.pump,
        ]

    def backlog_depth_keys(self) -> list[str]:
        return [self.transactional, self.backlog_topics, self.paused]

    def pause_keys(self, topic: str) -> list[str]:
        return [self.paused, self.backlog_topics, self.backlog(topic)]

    def sns_seen(self, message_id: str) -> str:
        """Dedupe mark of an SNS delivery, beside the `events` stream it is recorded into, so the
        mark and the events are written by one script (atomic, and cluster-safe)."""
        return f"{self.tag}:sns:{message_id}"

    def sns_bucket(self, day: int, bucket: int) -> str:
        """Dedupe marks of the SNS deliveries of one UTC day (epoch day) whose digest falls in
        `bucket`: a small hash (listpack) instead of a key per delivery."""
        return f"{self.tag}:snsd:{day}:{bucket}"

    @property
    def events(self) -> str:
        return f"{self.tag}:events"

    @property
    def events_dead(self) -> str:
        return f"{self.tag}:events:dead"

    def stats_topic(self, topic: str) -> str:
        return f"{self.tag}:stats:topic:{topic}"

    @property
    def stats_global(self) -> str:
        return f"{self.tag}:stats:global"

    @property
    def stats_hourly(self) -> str:
        return f"{self.tag}:stats:hourly"

    @property
    def stats_minutely(self) -> str:
        return f"{self.tag}:stats:minutely"

    def stats_series(self, topic: str) -> str:
        return f"{self.tag}:stats:series:{topic}"

    @property
    def stats_topics(self) -> str:
        return f"{self.tag}:stats:topics"

    @property
    def webhook_due(self) -> str:
        return f"{self.tag}:wh:due"

    @property
    def webhook_deliveries(self) -> str:
        return f"{self.tag}:wh:deliveries"

    @property
    def webhook_backlog(self) -> str:
        return f"{self.tag}:wh:backlog"

    @property
    def webhooks_dead(self) -> str:
        return f"{self.tag}:wh:dead"

    def webhook_queue_keys(self) -> list[str]:
        """KEYS of the webhook queue scripts, in the order of their headers."""
        return [self.webhook_due, self.webhook_deliveries, self.webhook_backlog, self.webhooks_dead]

    def stats_seconds(self, minute: int, topic: str = "") -> str:
        """Per-second `sent` counts of one epoch minute: of every topic, or of `topic`. The
        minute comes before the topic, so no topic name can make two keys collide."""
        key = f"{self.tag}:stats:seconds:{minute}"
        return f"{key}:{topic}" if topic else key


class Keys:
    """Key names for one deployment (a prefix) with a number of send partitions."""

    def __init__(self, prefix: str = "sesflow", partitions: int = 1) -> None:
        self.prefix = prefix
        count = max(1, partitions)
        self.partitions = [PartitionKeys(n, partition_tag(prefix, n, count)) for n in range(count)]

    def partition(self, n: int) -> PartitionKeys:
        return self.partitions[n]

    def for_message(self, msg_id: str) -> PartitionKeys:
        return self.partitions[partition_of(msg_id, len(self.partitions))]

    # --- global keys ------------------------------------------------------------------------

    @property
    def requests(self) -> str:
        return f"{{{self.prefix}:g}}:requests"

    @property
    def requests_dead(self) -> str:
        return f"{{{self.prefix}:g}}:requests:dead"

    def idempotency(self, key: str) -> str:
        return f"{{{self.prefix}:g}}:idem:{key}"

    def template(self, name: str) -> str:
        return f"{{{self.prefix}:g}}:template:{name}"

    @property
    def templates(self) -> str:
        return f"{{{self.prefix}:g}}:templates"

    @property
    def rate(self) -> str:
        return f"{{{self.prefix}:rate}}"

    @property
    def suppressed(self) -> str:
        return f"{{{self.prefix}:sup}}:suppressed"

    @property
    def unsubscribed(self) -> str:
        """Per-list unsubscribes, beside `suppressed` (one slot: checked in one round trip)."""
        return f"{{{self.prefix}:sup}}:unsubscribed"

    @property
    def ses_suppression_sync(self) -> str:
        """Held (PX, the sync interval) by the sender replica importing SES's list."""
        return f"{{{self.prefix}:sup}}:ses-sync"

    def ses_message(self, ses_message_id: str) -> str:
        """The per-mail link key older versions wrote; read during an upgrade."""
        return f"{self.prefix}:sesid:{ses_message_id}"

    def soft_bounces(self, email: str) -> str:
        """One address's recent soft bounces (`tracker.soft_bounces`): a key of its own, so the
        addresses spread over a cluster's slots, and each expires on its own."""
        return f"{self.prefix}:softbounce:{email}"

    def ses_links(self, day: int, bucket: int) -> str:
        """SES MessageId digest -> request id, of the mails sent on one UTC (epoch) day whose
        digest falls in `bucket`."""
        return f"{self.prefix}:sesids:{day}:{bucket}"

    @property
    def feedback_tagged(self) -> str:
        return f"{self.prefix}:feedback:tagged"

    @property
    def feedback_untagged(self) -> str:
        return f"{self.prefix}:feedback:untagged"

    @property
    def secret(self) -> str:
        return f"{self.prefix}:secret"

    @property
    def setup_paused(self) -> str:
        """Setups (configuration set, sender identity, endpoint) paused by a setup fault; read
        by every sender and by stats for the dashboard's alert."""
        return f"{self.prefix}:setup:paused"

    @property
    def webhook_endpoints(self) -> str:
        return f"{{{self.prefix}:wh}}:endpoints"

    @property
    def webhook_failing(self) -> str:
        return f"{{{self.prefix}:wh}}:failing"

    def setup_probe(self, scope: str) -> str:
        return f"{self.prefix}:setup:probe:{scope}"

    def setup_seen(self, scope: str) -> str:
        return f"{self.prefix}:setup:seen:{scope}"


def request_id(msg_id: str, index: int) -> str:
    return f"{msg_id}_{index}"


def is_decimal(text: str) -> bool:
    """1 to 19 ASCII digits: what int() reads as a stream id part or an index. `str.isdigit()`
    alone also takes "²" (which int() refuses) and any number of digits (int() refuses more
    than 4300); a request id can come from a URL."""
    return 0 < len(text) <= 19 and text.isascii() and text.isdigit()


def split_request_id(rid: str) -> tuple[str, int] | None:
    """`<msg_id>_<index>` -> (msg_id, index); None when it is not one of ours."""
    msg_id, sep, index = rid.rpartition("_")
    if not sep or not msg_id or not is_decimal(index):
        return None
    return msg_id, int(index)


def accepted_ms(msg_id: str) -> int:
    """A message id is a stream entry ID, whose first part is the time it was accepted."""
    head = msg_id.split("-", 1)[0]
    return int(head) if is_decimal(head) else 0
