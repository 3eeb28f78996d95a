-- ses_links.lua: store the SES message id -> request id links of several sent emails in one
-- call, so that the tracker can correlate SES feedback that carries neither tags nor headers
-- (identity notifications). A link is a field of a small hash named by the day and a bucket
-- of the SES id's digest (`common.day_buckets`); the hash expires a retention after its day.
-- On Redis Cluster the hashes live on different slots: one call per hash.
--
-- KEYS[k]         link hash k ({prefix}:sesids:<day>:<bucket>)
-- ARGV[1]         n = number of keys
-- ARGV[1+k]       expiry of hash k, epoch seconds (EXPIREAT; the same for every write of its day)
-- ARGV[2+n ..]    triples, one per link: index k of its hash in KEYS, field (the 8-byte digest
--                 of the SES id), request id (<msg_id>_<index>)
--
-- Returns the number of links written.
local n = tonumber(ARGV[1])
local written = 0
for i = 2 + n, #ARGV, 3 do
    redis.call("HSET", KEYS[tonumber(ARGV[i])], ARGV[i + 1], ARGV[i + 2])
    written = written + 1
end
for k = 1, n do
    redis.call("EXPIREAT", KEYS[k], ARGV[1 + k])
end
return written
