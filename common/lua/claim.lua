-- claim.lua: claim recipient jobs before calling SES (queued -> inflight), each atomically with
-- its topic's stop check, so that a cancelled or already-final job is never sent. One call may
-- claim several jobs of one partition (the sender batches the jobs that are ready together);
-- each job is decided on its own, exactly as if it were claimed alone.
--
-- A recipient's final state is one byte at its index in the message's final string (0 or
-- beyond the end = not final); its in-flight claim is a field of the message's state hash.
-- A state hash field that is not a claim is a final state written by an older version.
--
-- KEYS     every state hash ({p}:state:<msg_id>), final string ({p}:final:<msg_id>) and stop
--          key ({p}:stop:<topic>) the jobs use, each once (a batch is mostly jobs of one message)
-- ARGV[1]  JSON array, one array per job (one argument for the batch: packing 4 arguments per
--          job cost the sender more CPU than the rest of the claim):
--            [state hash's index in KEYS (1-based), final string's index, stop key's index,
--             recipient index (the hash field, a string), claim value "i:<ms>:<consumer>",
--             accepted time of the message (ms), inflight value this claim may take over]
--          The claim value is unique per attempt: running the script again with the same value
--          (a retry after a lost reply) answers "ok" again. The job is stopped when stop >=
--          accepted. The takeover value ("" = only a queued job may be claimed) is used by
--          ON_AMBIGUOUS=resend for a job whose sender died mid-call.
--
-- Returns, flat, one pair per job: "ok", claim | "final", state (its byte, or an older
-- version's text) | "busy", state | "stopped", stop_ms
local jobs = cjson.decode(ARGV[1])
local out = {}
for j = 1, #jobs do
    local job = jobs[j]
    local state_key, final_key, stop_key = KEYS[job[1]], KEYS[job[2]], KEYS[job[3]]
    local field, value, accepted, takeover = job[4], job[5], tonumber(job[6]), job[7]
    local done = redis.call("GETRANGE", final_key, field, field)
    local status, answer
    if done ~= "" and done ~= "\0" then
        status, answer = "final", done
    else
        local current = redis.call("HGET", state_key, field)
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
    end
    out[#out + 1] = status
    out[#out + 1] = answer
end
return out
