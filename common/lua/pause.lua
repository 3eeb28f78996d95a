-- pause.lua: pause or resume a topic's bulk sending (or all bulk sending: the topic "", which no topic is) in one partition.
--
-- A paused topic leaves the pump's topics (KEYS[2]) but keeps its backlog: its recipients keep
-- their place, take no rate token and are not failed; dispatch.lua and promote.lua add to the
-- backlog without putting the topic back. Resume puts it back at the lowest virtual time present,
-- so it takes its fair share from then on. The field "" (all bulk) stops the pump altogether.
-- The first pause's JSON (reason, time) stays until resume: a second pause keeps it, so the
-- reputation guard's reason is not overwritten by a manual pause, nor the reverse.
--
-- KEYS[1]  paused topics, hash                ({p}:paused)
-- KEYS[2]  topics with a bulk backlog, zset   ({p}:backlog:topics)
-- KEYS[3]  the topic's bulk backlog, list     ({p}:backlog:<topic>; unused for "")
-- ARGV[1]  "pause" | "resume"
-- ARGV[2]  topic, or "" for all bulk sending
-- ARGV[3]  pause: JSON {"reason", "at" (ms), ...}
--
-- Returns the JSON in force after the call ("" when not paused).
local topic = ARGV[2]
if ARGV[1] == "pause" then
    redis.call("HSETNX", KEYS[1], topic, ARGV[3])
    if topic ~= "" then
        redis.call("ZREM", KEYS[2], topic)
    end
    return redis.call("HGET", KEYS[1], topic)
end
redis.call("HDEL", KEYS[1], topic)
if topic ~= "" and redis.call("LLEN", KEYS[3]) > 0 then
    local head = redis.call("ZRANGE", KEYS[2], 0, 0, "WITHSCORES")
    redis.call("ZADD", KEYS[2], "NX", head[2] or 0, topic)
end
return ""
