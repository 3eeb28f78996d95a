-- ses_links.lua: store the SES message id -> request id links of several sent emails in one
-- call, so that the tracker can correlate SES feedback that carries neither tags nor headers
-- (identity notifications). A link is a field of a small hash named by the day and a bucket
-- of the SES id's digest (`common.day_buckets`); the hash expires a retention after its day.
-- On Redis Cluster the hashes live on different slots: one call per hash.
--
-- KEYS[k]   link hash k ({prefix}:sesids:<day>:<bucket>), all of one day
-- ARGV[1]   expiry of every hash, epoch seconds (EXPIREAT: the same for every write of a day)
-- ARGV[2]   the links, one after the other, each: k (the index of its hash in KEYS) in two
--           bytes, big-endian (a day has LINK_BUCKETS = 1024 hashes), the 8-byte digest of the SES id (the field), and the request id
--           (<msg_id>_<index>, which holds no zero byte) ended by a zero byte. One argument for
--           all, not three each: the sender packs every argument on its own.
--
-- Returns the number of links written.
local blob = ARGV[2]
local at, written = 1, 0
while at <= #blob do
    local k, field, rid
    k, field, rid, at = struct.unpack(">Hc8s", blob, at)
    redis.call("HSET", KEYS[k], field, rid)
    written = written + 1
end
for k = 1, #KEYS do
    redis.call("EXPIREAT", KEYS[k], ARGV[1])
end
return written
