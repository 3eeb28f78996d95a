-- reject_once.lua: record a dead-lettered message's `rejected` event once, however often the
-- dispatcher retries it. The dead letter and its XACK live on the `requests` slot, the event on
-- the message's partition: they cannot share one transaction, so this marker makes the event
-- idempotent (a crash between the two repeats only the half that was not done).
--
-- KEYS[1]  the message's hash           ({p}:msg:<msg_id>)
-- KEYS[2]  events stream                ({p}:events)
-- ARGV[1]  event field name             ("e")
-- ARGV[2]  the event, encoded
-- ARGV[3]  TTL of a hash this creates, ms
--
-- Returns 1 when the event was recorded now, 0 when it had been already.
if redis.call("HSETNX", KEYS[1], "rejected", "1") == 0 then
    return 0
end
if redis.call("PTTL", KEYS[1]) < 0 then
    redis.call("PEXPIRE", KEYS[1], ARGV[3])
end
redis.call("XADD", KEYS[2], "*", ARGV[1], ARGV[2])
return 1
