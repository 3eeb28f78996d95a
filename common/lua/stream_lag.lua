-- stream_lag.lua: how many entries of a stream come after a group's last-delivered ID, counted
-- inside Redis, up to a cap. Redis 7 reports this as the group's `lag`; 6.2 does not, and
-- fetching the entries to count them in the client cost far more than counting them here.
--
-- KEYS[1]  the stream
-- ARGV[1]  the group's last-delivered ID
-- ARGV[2]  the cap (bounded work however long the backlog)
--
-- Returns the count, at most the cap.
local ok, rows = pcall(redis.call, "XRANGE", KEYS[1], "(" .. ARGV[1], "+", "COUNT", ARGV[2])
if not ok then
    return 0
end
return #rows
