-- backlog_depth.lua: the jobs waiting in one partition's backlogs, by lane, counted in Redis.
--
-- Bulk = the topics in the pump's set (KEYS[2]); paused = the backlogs of paused topics (fields
-- of KEYS[3] other than "", the all-bulk pause). O(topics with a backlog), never O(jobs).
--
-- KEYS[1]  transactional backlog, list          ({p}:transactional)
-- KEYS[2]  topics with a bulk backlog, zset     ({p}:backlog:topics)
-- KEYS[3]  paused topics, hash                  ({p}:paused)
-- ARGV[1]  bulk backlog key prefix              ("{p}:backlog:")
--
-- Returns {transactional, bulk, paused}.
local bulk = 0
for _, topic in ipairs(redis.call("ZRANGE", KEYS[2], 0, -1)) do
    bulk = bulk + redis.call("LLEN", ARGV[1] .. topic)
end
local paused = 0
for _, topic in ipairs(redis.call("HKEYS", KEYS[3])) do
    if topic ~= "" then
        paused = paused + redis.call("LLEN", ARGV[1] .. topic)
    end
end
return {redis.call("LLEN", KEYS[1]), bulk, paused}
