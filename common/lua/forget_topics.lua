-- forget_topics.lua: delete the counters and the time series of topics idle for longer than
-- STATS_RETENTION, and take them out of the topic index. The idle check is made again here, in
-- the same step as the delete: an event counted since the caller listed the topic (which moves
-- its last activity forward) keeps it.
--
-- KEYS[1]       topic index, zset topic -> last activity ms   ({p}:stats:topics)
-- KEYS[2j]      counters of topic j                           ({p}:stats:topic:<t>)
-- KEYS[2j+1]    time series of topic j                        ({p}:stats:series:<t>)
-- ARGV[1]       cutoff, ms: a topic last active before it is forgotten
-- ARGV[1+j]     name of topic j
--
-- Returns how many topics were forgotten.
local cutoff = tonumber(ARGV[1])
local forgotten = 0
for j = 1, #ARGV - 1 do
    local topic = ARGV[1 + j]
    local last = redis.call("ZSCORE", KEYS[1], topic)
    if last and tonumber(last) < cutoff then
        redis.call("DEL", KEYS[2 * j], KEYS[2 * j + 1])
        redis.call("ZREM", KEYS[1], topic)
        forgotten = forgotten + 1
    end
end
return forgotten
