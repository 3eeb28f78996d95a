-- claim.lua: claim recipient jobs before calling SES (queued -> inflight), each atomically with
-- its topic's stop check, so that a cancelled or already-final job is never sent. One call may
-- claim several jobs of one partition (the sender batches the jobs that are ready together);
-- each job is decided on its own, exactly as if it were claimed alone.
--
-- For job j (1-based), n jobs in all:
-- KEYS[2j-1]  state hash of the job's message ({p}:state:<msg_id>)
-- KEYS[2j]    stop key of the message's topic ({p}:stop:<topic>)
-- ARGV[4j-3]  recipient index (the hash field)
-- ARGV[4j-2]  claim value "i:<ms>:<consumer>", unique per attempt: running the script again with
--             the same value (a retry after a lost reply) answers "ok" again
-- ARGV[4j-1]  accepted time of the message (ms); the job is stopped when stop >= accepted
-- ARGV[4j]    an inflight value this claim may take over ("" = only a queued job may be
--             claimed); used by ON_AMBIGUOUS=resend for a job whose sender died mid-call
--
-- Returns, flat, one pair per job: "ok", claim | "final", state | "busy", state |
-- "stopped", stop_ms
local out = {}
for j = 1, #KEYS / 2 do
    local state_key, stop_key = KEYS[2 * j - 1], KEYS[2 * j]
    local field, value = ARGV[4 * j - 3], ARGV[4 * j - 2]
    local accepted, takeover = tonumber(ARGV[4 * j - 1]), ARGV[4 * j]
    local current = redis.call("HGET", state_key, field)
    local status, answer
    if current == value then
        status, answer = "ok", current
    elseif current and string.sub(current, 1, 2) ~= "i:" then
        status, answer = "final", current
    elseif current and current ~= takeover then
        status, answer = "busy", current
    else
        local stop = tonumber(redis.call("GET", stop_key) or "")
        if stop and stop >= accepted then
            status, answer = "stopped", tostring(stop)
        else
            redis.call("HSET", state_key, field, value)
            status, answer = "ok", value
        end
    end
    out[#out + 1] = status
    out[#out + 1] = answer
end
return out
