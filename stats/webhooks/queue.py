"""The webhook delivery queue of one partition (keys in `common/keys.py`, one hash tag):

- `due` (zset id -> when due, ms), `deliveries` (hash id -> `Delivery` JSON), `backlog`
  (hash endpoint -> deliveries waiting), `dead` (stream of dead letters);
- `enqueue` adds a batch's deliveries to a MULTI the fan-out also XACKs in;
- `claim` (webhook_claim.lua) leases due deliveries; `settle` (webhook_settle.lua) ends
  leases, many in one call: delivered, retry later, or dead, each only while its lease is still
  ours (so a settlement sent twice, or after the lease ran out, changes nothing);
- `requeue` (webhook_requeue.lua) puts a dead letter back (`sesflow dlq replay`).

A delivery id is `<entry ms, 15 digits>-<seq, 6 digits>.<endpoint id>`: the zset orders equal
due times by it, which is the order of the events, and the scripts read the endpoint from it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import msgspec

from sesflow.common.keys import PartitionKeys
from sesflow.common.scripts import register
from sesflow.common.streams import DEAD_LETTER_MAXLEN, parse_id

# The fields of a dead letter besides the delivery's own (META for `sesflow dlq`).
DEAD_META = ("reason", "attempts", "failed_at_ms")


class Delivery(msgspec.Struct, frozen=True, kw_only=True):
    endpoint: str
    webhook_id: str  # the same for every attempt: receivers dedupe on it
    type: str
    body: str
    first_ms: int  # when it was enqueued; retries stop WEBHOOK_RETRY_FOR after it
    attempts: int = 0
    last_error: str = ""


_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(Delivery)


def encode(delivery: Delivery) -> bytes:
    return _encoder.encode(delivery)


def decode(raw: str | bytes) -> Delivery:
    return _decoder.decode(raw)


def delivery_id(entry_id: str, endpoint_id: str) -> str:
    ms, seq = parse_id(entry_id)
    return f"{ms:015d}-{seq:06d}.{endpoint_id}"


def webhook_id(partition: int, entry_id: str) -> str:
    """The event's id for receivers: one per event, stable across retries and replays."""
    return f"msg_{partition}_{entry_id}"


def enqueue(tx: Any, p: PartitionKeys, items: list[tuple[str, Delivery]], now_ms: int) -> None:
    """Add to a MULTI: every delivery, due now, counted in its endpoint's backlog."""
    if not items:
        return
    tx.hset(p.webhook_deliveries, mapping={i: encode(d) for i, d in items})
    tx.zadd(p.webhook_due, {i: now_ms for i, _ in items}, nx=True)
    per_endpoint: dict[str, int] = {}
    for _, d in items:
        per_endpoint[d.endpoint] = per_endpoint.get(d.endpoint, 0) + 1
    for endpoint, n in per_endpoint.items():
        tx.hincrby(p.webhook_backlog, endpoint, n)


@dataclass(frozen=True, slots=True)
class Claimed:
    partition: PartitionKeys
    id: str
    lease: str  # the lease score: settling checks it is still ours
    delivery: Delivery


@dataclass(frozen=True, slots=True)
class Settlement:
    """How a claimed delivery ends: `done` (delivered or dropped), `retry` or `dead`."""

    claimed: Claimed
    outcome: str
    extra: tuple[Any, ...] = ()

    @classmethod
    def done(cls, c: Claimed) -> Settlement:
        return cls(c, "done")

    @classmethod
    def retry(cls, c: Claimed, due_ms: int, delivery: Delivery) -> Settlement:
        return cls(c, "retry", (due_ms, encode(delivery)))

    @classmethod
    def dead(cls, c: Claimed, delivery: Delivery, reason: str, now_ms: int) -> Settlement:
        fields = {
            **{k: str(v) for k, v in msgspec.structs.asdict(delivery).items()},
            "id": c.id,
            "reason": reason[:500],
            "failed_at_ms": str(now_ms),
        }
        return cls(c, "dead", tuple(x for pair in fields.items() for x in pair))

    def args(self) -> list[Any]:
        c = self.claimed
        return [c.id, c.lease, c.delivery.endpoint, self.outcome, len(self.extra), *self.extra]


class Queue:
    """The scripts, registered once per client."""

    def __init__(self, client: Any) -> None:
        self.client = client
        self._claim = register(client, "webhook_claim")
        self._settle = register(client, "webhook_settle")
        self._requeue = register(client, "webhook_requeue")

    async def claim(
        self,
        p: PartitionKeys,
        now_ms: int,
        lease_ms: int,
        count: int,
        default_budget: int,
        budgets: dict[str, int],
    ) -> list[Claimed]:
        args: list[Any] = [now_ms, lease_ms, count, max(count * 4, 100), default_budget]
        for endpoint, left in budgets.items():
            args += [endpoint, left]
        reply = await self._claim(keys=[p.webhook_due, p.webhook_deliveries], args=args)
        claimed = []
        for i in range(0, len(reply), 3):
            did, lease, raw = str(reply[i]), str(reply[i + 1]), reply[i + 2]
            claimed.append(Claimed(p, did, lease, decode(raw)))
        return claimed

    async def settle(self, p: PartitionKeys, settlements: list[Settlement]) -> list[bool]:
        """End these leases of partition `p` in one call; per settlement, whether it was still
        ours."""
        if not settlements:
            return []
        args: list[Any] = [DEAD_LETTER_MAXLEN]
        for s in settlements:
            args += s.args()
        reply = await self._settle(keys=p.webhook_queue_keys(), args=args)
        return [bool(int(x)) for x in reply]

    async def done(self, c: Claimed) -> bool:
        return await self._one(Settlement.done(c))

    async def retry(self, c: Claimed, due_ms: int, delivery: Delivery) -> bool:
        return await self._one(Settlement.retry(c, due_ms, delivery))

    async def dead(self, c: Claimed, delivery: Delivery, reason: str, now_ms: int) -> bool:
        return await self._one(Settlement.dead(c, delivery, reason, now_ms))

    async def _one(self, s: Settlement) -> bool:
        (settled,) = await self.settle(s.claimed.partition, [s])
        return settled

    async def requeue(
        self, p: PartitionKeys, dead_id: str, fields: dict[str, str], now_ms: int
    ) -> int:
        """A dead letter back on the queue, due now, with a new retry window (1), or 0 when the
        dead letter is gone, -1 when that delivery is queued already."""
        delivery = Delivery(
            endpoint=fields["endpoint"],
            webhook_id=fields["webhook_id"],
            type=fields.get("type", ""),
            body=fields["body"],
            first_ms=now_ms,
        )
        args = [dead_id, fields["id"], delivery.endpoint, now_ms, encode(delivery)]
        return int(await self._requeue(keys=p.webhook_queue_keys(), args=args))
