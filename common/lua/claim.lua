-- claim.lua: claim one recipient job before calling SES (queued -> inflight), atomically with
-- the topic's stop check, so that a cancelled or already-final job is never sent.
--
-- KEYS[1]  state hash of the message      ({p}:state:<msg_id>)
-- KEYS[2]  stop key of the message's topic ({p}:stop:<topic>)
-- ARGV[1]  recipient index (the hash field)
-- ARGV[2]  claim value "i:<ms>:<consumer>", unique per attempt: running the script again with
--          the same value (a retry after a lost reply) answers "ok" again
-- ARGV[3]  accepted time of the message (ms); the job is stopped when stop >= accepted
-- ARGV[4]  an inflight value this claim may take over ("" = only a queued job may be claimed);
--          used by ON_AMBIGUOUS=resend for a job whose sender died mid-call
--
-- Returns {"ok", claim} | {"final", state} | {"busy", state} | {"stopped", stop_ms}
local current = redis.call("HGET", KEYS[1], ARGV[1])
if current == ARGV[2] then
    return {"ok", current}
end
if current and string.sub(current, 1, 2) ~= "i:" then
    return {"final", current}
end
if current and current ~= ARGV[4] then
    return {"busy", current}
end
local stop = tonumber(redis.call("GET", KEYS[2]) or "")
if stop and stop >= tonumber(ARGV[3]) then
    return {"stopped", tostring(stop)}
end
redis.call("HSET", KEYS[1], ARGV[1], ARGV[2])
return {"ok", ARGV[2]}
