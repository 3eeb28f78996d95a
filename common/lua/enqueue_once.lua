-- enqueue_once.lua: the write of a POST /v1/messages that carries an Idempotency-Key. Its
-- messages and the key's record are written only while the key still holds this request's own
-- placeholder: once the placeholder has expired and another request has claimed the key, that
-- request does the work, and this one writes nothing (it would enqueue a second time).
--
-- KEYS[1]  requests stream                       ({prefix:g}:requests)
-- KEYS[2]  the Idempotency-Key record            ({prefix:g}:idem:<key>)
-- ARGV[1]  this request's placeholder, exactly as SET (body hash + a token of its own)
-- ARGV[2]  the record that replaces it (the answer, without the message ids)
-- ARGV[3]  TTL of the record, seconds
-- ARGV[4]  field name of an entry on `requests` ("message")
-- ARGV[5..] one encoded message per entry, in order
--
-- Returns {"ok", id1, id2, ...}: the entry ids; or {"lost"}: the key is not ours (nothing
-- written).
if redis.call("GET", KEYS[2]) ~= ARGV[1] then
    return {"lost"}
end
local out = {"ok"}
for n = 5, #ARGV do
    out[#out + 1] = redis.call("XADD", KEYS[1], "*", ARGV[4], ARGV[n])
end
redis.call("SET", KEYS[2], ARGV[2], "EX", ARGV[3])
return out
