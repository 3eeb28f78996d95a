-- record.lua: store a job's final state, its event and (optionally) a dead letter, and XACK its
-- `sends` entry, all at once: a crash can never leave a result stored but unacknowledged in a
-- way that sends twice, nor acknowledged but unstored.
--
-- KEYS[1]  state hash of the message       ({p}:state:<msg_id>)
-- KEYS[2]  events stream                   ({p}:events)
-- KEYS[3]  sends stream                    ({p}:sends)
-- KEYS[4]  sends dead-letter stream        ({p}:sends:dead)
-- ARGV[1]  recipient index (hash field); "" for an entry that has no job (malformed): then
--          only the dead letter and the XACK are written
-- ARGV[2]  state expected now: "" = queued, or the exact inflight value ("i:<ms>:<consumer>");
--          a queued (absent) state is always accepted
-- ARGV[3]  final state to write: s:<ses id> | f:<reason> | x | p | u
-- ARGV[4]  event JSON for `events` field "e" ("" = no event)
-- ARGV[5]  consumer group of `sends`
-- ARGV[6]  entry id on `sends`
-- ARGV[7]  TTL of the state hash in seconds (0 = leave as is)
-- ARGV[8..] dead-letter entry as field/value pairs (none = no dead letter)
--
-- Returns {"ok", state} when written; {"final", state} when the job was already final (nothing
-- written, entry acknowledged: a redelivery); {"busy", state} when someone else holds an inflight
-- claim (nothing written, not acknowledged).
local field = ARGV[1]
if field ~= "" then
    local current = redis.call("HGET", KEYS[1], field)
    if current and string.sub(current, 1, 2) ~= "i:" then
        redis.call("XACK", KEYS[3], ARGV[5], ARGV[6])
        return {"final", current}
    end
    -- Absent is accepted too: our claim may have vanished with a Redis restart without AOF, and
    -- the result of a real SES call must still be written.
    if current and current ~= ARGV[2] then
        return {"busy", current}
    end
    redis.call("HSET", KEYS[1], field, ARGV[3])
    local ttl = tonumber(ARGV[7])
    if ttl and ttl > 0 then
        redis.call("EXPIRE", KEYS[1], ttl)
    end
    if ARGV[4] ~= "" then
        redis.call("XADD", KEYS[2], "*", "e", ARGV[4])
    end
end
if #ARGV > 7 then
    local dead = {}
    for i = 8, #ARGV do
        dead[#dead + 1] = ARGV[i]
    end
    redis.call("XADD", KEYS[4], "*", unpack(dead))
end
redis.call("XACK", KEYS[3], ARGV[5], ARGV[6])
return {"ok", ARGV[3]}
