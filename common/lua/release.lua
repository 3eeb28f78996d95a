-- release.lua: give a claimed job back (inflight -> queued) when SES did not take it
-- (throttled, transient error): only if the claim is still ours.
--
-- KEYS[1]  state hash of the message ({p}:state:<msg_id>)
-- ARGV[1]  recipient index (the hash field)
-- ARGV[2]  our claim value "i:<ms>:<consumer>"
--
-- Returns 1 when released, 0 when the field no longer held our claim.
if redis.call("HGET", KEYS[1], ARGV[1]) == ARGV[2] then
    redis.call("HDEL", KEYS[1], ARGV[1])
    return 1
end
return 0
