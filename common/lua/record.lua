-- record.lua: store jobs' final states, their events and (optionally) dead letters, and XACK
-- their `sends` entries, all at once: a crash can never leave a result stored but
-- unacknowledged in a way that sends twice, nor acknowledged but unstored. One call may record
-- several jobs of one partition (results the sender got within the same moment); each job is
-- decided on its own exactly as if recorded alone, and the whole call is atomic.
--
-- KEYS[1]    events stream                   ({p}:events)
-- KEYS[2]    sends stream                    ({p}:sends)
-- KEYS[3]    sends dead-letter stream        ({p}:sends:dead)
-- KEYS[3+j]  state hash of job j's message   ({p}:state:<msg_id>; for an entry without a job
--            any key of the partition, it is not touched)
-- ARGV[1]    consumer group of `sends`
-- ARGV[2]    TTL of the state hashes in seconds (0 = leave as is)
-- ARGV[3]    approximate length cap of the dead-letter stream (MAXLEN ~; 0 = no cap)
-- then per job j, in order, 6 values and its dead letter:
--   recipient index (hash field); "" for an entry that has no job (malformed): then only the
--     dead letter and the XACK are written
--   state expected now: "" = queued, or the exact inflight value ("i:<ms>:<consumer>"); a
--     queued (absent) state is always accepted
--   final state to write: s:<ses id> | f:<reason> | x | p | u
--   event JSON for `events` field "e" ("" = no event)
--   entry id on `sends`
--   d = number of dead-letter values that follow (field/value pairs; 0 = no dead letter)
--
-- Returns, flat, one pair per job: "ok", state when written; "final", state when the job was
-- already final (nothing written, entry acknowledged: a redelivery); "busy", state when someone
-- else holds an inflight claim (nothing written, not acknowledged).
local group = ARGV[1]
local ttl = tonumber(ARGV[2])
local dead_maxlen = tonumber(ARGV[3])
local out = {}
local a = 4
local j = 0
while a <= #ARGV do
    j = j + 1
    local state_key = KEYS[3 + j]
    local field, expected, final, event, entry = ARGV[a], ARGV[a + 1], ARGV[a + 2], ARGV[a + 3], ARGV[a + 4]
    local ndead = tonumber(ARGV[a + 5])
    local first_dead = a + 6
    a = first_dead + ndead
    local status, answer = "ok", final
    if field ~= "" then
        local current = redis.call("HGET", state_key, field)
        if current and string.sub(current, 1, 2) ~= "i:" then
            status, answer = "final", current
        -- Absent is accepted too: our claim may have vanished with a Redis restart without AOF,
        -- and the result of a real SES call must still be written.
        elseif current and current ~= expected then
            status, answer = "busy", current
        else
            redis.call("HSET", state_key, field, final)
            if ttl and ttl > 0 then
                redis.call("EXPIRE", state_key, ttl)
            end
            if event ~= "" then
                redis.call("XADD", KEYS[1], "*", "e", event)
            end
        end
    end
    if status == "ok" and ndead > 0 then
        if dead_maxlen > 0 then
            redis.call("XADD", KEYS[3], "MAXLEN", "~", dead_maxlen, "*",
                unpack(ARGV, first_dead, first_dead + ndead - 1))
        else
            redis.call("XADD", KEYS[3], "*", unpack(ARGV, first_dead, first_dead + ndead - 1))
        end
    end
    if status ~= "busy" then
        redis.call("XACK", KEYS[2], group, entry)
    end
    out[#out + 1] = status
    out[#out + 1] = answer
end
return out
