-- ses_links.lua: store the SES message id -> request id links of several sent emails in one
-- call, so that the tracker can correlate SES feedback that carries neither tags nor headers.
-- Only used on a single Redis: the link keys have no hash tag (they are found by SES id alone),
-- so on Redis Cluster they are set one by one instead.
--
-- KEYS[j]    link key of sent email j ({prefix}:ses:<ses message id>)
-- ARGV[1]    TTL in seconds
-- ARGV[1+j]  request id of email j (<msg_id>_<index>)
--
-- Returns the number of links written.
local ttl = tonumber(ARGV[1])
for j = 1, #KEYS do
    redis.call("SET", KEYS[j], ARGV[1 + j], "EX", ttl)
end
return #KEYS
