"""ingest on a cluster: the cancel's stop time comes from the clock of the node holding
`requests` (the clock that stamps message ids), not from whichever node TIME would go to; stored
templates and personalised jobs keep to their hash tags."""

from __future__ import annotations

import json
import time
from typing import Any

from redis.asyncio.cluster import RedisCluster
from redis.crc import key_slot

from sesflow.common.connection import ensure_group
from sesflow.common.keys import DISPATCH_GROUP, Keys
from sesflow.common.producer import enqueue
from sesflow.common.schema import Job, MessageContent, MessageRequest, Recipient
from sesflow.common.settings import Settings
from sesflow.ingest.api import requests_clock_ms
from sesflow.ingest.dispatcher import Dispatcher
from sesflow.ingest.scheduler import Scheduler
from sesflow.ingest.templates import TemplateBody, TemplateStore
from sesflow.sender.pump import Pump

from support.redis_cluster import RedisClusterProcess

KEYS = Keys("sesflow", 3)


async def test_the_stop_time_is_read_on_the_requests_node(
    cluster_client: RedisCluster, redis_cluster: RedisClusterProcess
) -> None:
    asked: list[Any] = []
    real_time = cluster_client.time

    async def spy(**kwargs: Any) -> Any:
        asked.append(kwargs.get("target_nodes"))
        return await real_time(**kwargs)

    cluster_client.time = spy  # type: ignore[method-assign]
    before = int(time.time() * 1000)
    stop_ms = await requests_clock_ms(cluster_client, KEYS)
    assert before - 1000 <= stop_ms <= int(time.time() * 1000) + 1000
    [node] = asked
    assert node.port == redis_cluster.port_of_slot(key_slot(KEYS.requests.encode()))
    # and it is not simply the node TIME goes to by default
    assert cluster_client.get_default_node().port != node.port or len(redis_cluster.ports) == 1


async def test_templates_and_personalised_jobs_on_a_cluster(cluster_client: RedisCluster) -> None:
    """template_put.lua, the template reads and the transaction of DELETE stay on `{g}`;
    dispatch.lua and promote.lua carry each recipient's data within the message's partition."""
    store = TemplateStore(cluster_client, KEYS)
    body = TemplateBody(subject="Hi {{name}}", html="<p>{{name}}</p>", data={"name": "you"})
    assert await store.put("welcome", body) == (1, True)
    assert await store.put("welcome", body) == (2, False)
    assert [t["name"] for t in await store.list()] == ["welcome"]

    settings = Settings(redis_cluster=True, send_partitions=3)
    await ensure_group(cluster_client, KEYS.requests, DISPATCH_GROUP)
    dispatcher = Dispatcher(cluster_client, settings, KEYS, consumer="test")
    due = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() - 1))
    message = MessageRequest(
        topic_id="t",
        template="welcome",
        recipients=[Recipient(email="a@x.io", data={"name": "Ada"}), Recipient(email="b@x.io")],
        scheduled_at=due,
    )
    msg_id = await enqueue(cluster_client, KEYS, message)
    # decoded replies: redis-py's types cannot tell
    reply: Any = await cluster_client.xreadgroup(
        DISPATCH_GROUP, "test", {KEYS.requests: ">"}, count=1
    )
    [(entry_id, fields)] = reply[0][1]
    await dispatcher.handle(entry_id, fields)
    assert await store.delete("welcome") and not await store.delete("welcome")

    p = KEYS.for_message(msg_id)
    await Scheduler(cluster_client, KEYS).tick()
    # Promoted into the topic's bulk backlog; the pump (a script building the backlog's key as
    # it runs, on the partition's slot) moves it to `sends`.
    assert await Pump(Settings(), cluster_client, KEYS).top_up() == 2
    entries: Any = await cluster_client.xrange(p.sends)
    jobs = [Job.from_fields(f) for _, f in entries]
    assert [(j.email, j.data) for j in jobs] == [("a@x.io", '{"name":"Ada"}'), ("b@x.io", "")]
    stored: Any = await cluster_client.hgetall(p.message(msg_id))
    content = MessageContent.from_hash(msg_id, stored)
    assert content.subject == "Hi {{name}}" and json.loads(content.data) == {"name": "you"}
