-- record.lua: store jobs' final states, their events and (optionally) dead letters, and XACK
-- their `sends` entries, all at once: a crash can never leave a result stored but
-- unacknowledged in a way that sends twice, nor acknowledged but unstored. One call may record
-- several jobs of one partition (results the sender got within the same moment); each job is
-- decided on its own exactly as if recorded alone, and the whole call is atomic.
--
-- A final state is one byte at the recipient's index in the message's final string (SETRANGE;
-- bytes never written read 0 = not final); the claim it replaces leaves the state hash, which
-- disappears with its last claim. The SES MessageId and the failure reason go only with the
-- event. A state hash field that is not a claim is a final state an older version wrote.
--
-- KEYS[1]    events stream                   ({p}:events)
-- KEYS[2]    sends stream                    ({p}:sends)
-- KEYS[3]    sends dead-letter stream        ({p}:sends:dead)
-- KEYS[4..]  the state hashes ({p}:state:<msg_id>) and final strings ({p}:final:<msg_id>) of
--            the jobs' messages, each once
-- ARGV[1]    consumer group of `sends`
-- ARGV[2]    TTL of the final strings (and state hashes) in seconds (0 = leave as is)
-- ARGV[3]    approximate length cap of the dead-letter stream (MAXLEN ~; 0 = no cap)
-- ARGV[4]    JSON array, one array per job, in order (one argument for the batch: packing 6 or
--            more arguments per job cost the sender more CPU than the rest of the record):
--   [1] index in KEYS of its state hash, [2] of its final string (for an entry without a job:
--       any, they are not touched)
--   [3] recipient index (a string); "" for an entry that has no job (malformed): then only the
--       dead letter and the XACK are written
--   [4] state expected now: "" = queued, or the exact inflight value ("i:<ms>:<consumer>"); a
--       queued (absent) state is always accepted
--   [5] final state to write, one byte: s (sent) | f (failed) | x (stopped) | p (suppressed) |
--       u (unknown)
--   [6] event JSON for `events` field "e" ("" = no event)
--   [7] entry id on `sends`
--   [8] d = number of dead-letter values (field/value pairs; 0 = no dead letter); they are
--       the next d of ARGV[5..], in job order (separate arguments: they may hold any bytes)
--
-- Returns, flat, one pair per job: "ok", state when written; "final", state when the job was
-- already final (nothing written, entry acknowledged: a redelivery); "busy", state when someone
-- else holds an inflight claim (nothing written, not acknowledged).
local group = ARGV[1]
local ttl = tonumber(ARGV[2])
local dead_maxlen = tonumber(ARGV[3])
local jobs = cjson.decode(ARGV[4])
local out = {}
local next_dead = 5
for j = 1, #jobs do
    local job = jobs[j]
    local state_key, final_key = KEYS[job[1]], KEYS[job[2]]
    local field, expected, final, event, entry = job[3], job[4], job[5], job[6], job[7]
    local ndead = job[8]
    local first_dead = next_dead
    next_dead = next_dead + ndead
    local status, answer = "ok", final
    if field ~= "" then
        local done = redis.call("GETRANGE", final_key, field, field)
        local current = nil
        if done ~= "" and done ~= "\0" then
            status, answer = "final", done
        else
            current = redis.call("HGET", state_key, field)
        end
        if status == "final" then
            -- already final in the final string
        elseif current and string.sub(current, 1, 2) ~= "i:" then
            status, answer = "final", current
        -- Absent is accepted too: our claim may have vanished with a Redis restart without AOF,
        -- and the result of a real SES call must still be written.
        elseif current and current ~= expected then
            status, answer = "busy", current
        else
            redis.call("SETRANGE", final_key, field, final)
            if current then
                redis.call("HDEL", state_key, field)
            end
            if ttl and ttl > 0 then
                redis.call("EXPIRE", final_key, ttl)
                -- claims of other recipients still in it: a claim whose job vanished must not
                -- outlive the message's states (no-op once the hash is gone)
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
