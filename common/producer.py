"""Enqueue messages without the HTTP API: XADD straight onto the `requests` stream.

Entry format (any language can produce it):

    XADD {<prefix>:g}:requests * message <JSON>

with `<prefix>` = REDIS_PREFIX (default `sesflow`, so the stream is `{sesflow:g}:requests`) and
`<JSON>` an object with the fields of `common.schema.MessageRequest`:

    {"topic_id": "newsletter-2024-01",          required, <= 200 characters
     "emails": ["a@example.com", ...],           1..MAX_RECIPIENTS addresses, with "recipients"
     "recipients": [{"email": "b@example.com", "data": {"name": "B"}}],   with their merge data
     "subject": "Hi {{name}}", "content": "<p>...</p>",   required (content is HTML) unless
     "template": "welcome",                      a stored template gives them
     "text": "...", "data": {"name": "you"},     optional: text part, merge defaults
     "reply_to": [...], "headers": {...}, "attachments": [{"filename", "content_type",
     "content" (base64)}],                       optional (docs/api.md: personal messages)
     "scheduled_at": "2024-01-01T09:00:00Z",     optional: RFC 3339 or "YYYY-MM-DD HH:MM:SS" (UTC)
     "track_opens": true, "track_clicks": false, "unsubscribe": true,   optional
     "from_email": "News <news@example.com>"}    optional, a verified SES identity

The entry ID that Redis assigns is the message id (`msg_id`); its first part is the time the
message was accepted. The dispatcher validates the entry: invalid addresses are dropped (and
counted as `rejected`), a message that cannot be sent at all (bad data, a placeholder some
recipient cannot fill, an unknown template...) goes to `{<prefix>:g}:requests:dead` with the
reason. Unlike the HTTP API, nothing is checked here before the XADD; a template is resolved
when the dispatcher takes the entry.
"""

from __future__ import annotations

import redis as syncredis

from sesflow.common.connection import Fields, Redis
from sesflow.common.keys import Keys
from sesflow.common.schema import REQUEST_FIELD, MessageRequest, encode


def entry_fields(message: MessageRequest) -> Fields:
    return {REQUEST_FIELD: encode(message)}


async def enqueue(client: Redis, keys: Keys, message: MessageRequest) -> str:
    """XADD one message (redis.asyncio client); returns its msg_id."""
    msg_id = await client.xadd(keys.requests, entry_fields(message))
    return msg_id.decode() if isinstance(msg_id, bytes) else str(msg_id)


def enqueue_sync(client: syncredis.Redis, keys: Keys, message: MessageRequest) -> str:
    """The same with a synchronous `redis.Redis` client."""
    msg_id = client.xadd(keys.requests, entry_fields(message))
    return msg_id.decode() if isinstance(msg_id, bytes) else str(msg_id)
