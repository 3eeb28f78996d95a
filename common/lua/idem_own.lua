-- idem_own.lua: keep alive, or drop, an Idempotency-Key placeholder, but only while it is still
-- this request's own (compare and act in one step: a GET then an EXPIRE or DEL could touch the
-- placeholder of another request that claimed the key in between).
--
-- KEYS[1]  the Idempotency-Key record            ({prefix:g}:idem:<key>)
-- ARGV[1]  this request's placeholder, exactly as SET
-- ARGV[2]  seconds to live from now; 0 = delete it
--
-- Returns 1 when the placeholder was ours (and was refreshed or deleted), 0 otherwise.
if redis.call("GET", KEYS[1]) ~= ARGV[1] then
    return 0
end
if tonumber(ARGV[2]) > 0 then
    redis.call("EXPIRE", KEYS[1], ARGV[2])
else
    redis.call("DEL", KEYS[1])
end
return 1
