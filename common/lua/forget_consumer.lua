-- forget_consumer.lua: XGROUP DELCONSUMER one consumer if, at this moment, it holds no pending
-- entry and has been idle for longer than the limit. The caller listed it as idle and empty
-- with XINFO CONSUMERS, but it may have read entries since: deleting it then would drop them
-- from the pending list (delivered, never acknowledged, never reclaimed). Checked and deleted in
-- one step, nothing can come in between.
--
-- KEYS[1]       the stream
-- ARGV[1]       consumer group
-- ARGV[2]       consumer name
-- ARGV[3]       idle limit, ms: a consumer idle for longer (and holding nothing) is deleted
--
-- Returns 1 when the consumer was deleted, 0 otherwise (busy, recent, or already gone).
local limit = tonumber(ARGV[3])
for _, consumer in ipairs(redis.call("XINFO", "CONSUMERS", KEYS[1], ARGV[1])) do
    local info = {}
    for i = 1, #consumer, 2 do
        info[consumer[i]] = consumer[i + 1]
    end
    if info["name"] == ARGV[2] then
        if tonumber(info["pending"]) == 0 and tonumber(info["idle"]) > limit then
            redis.call("XGROUP", "DELCONSUMER", KEYS[1], ARGV[1], ARGV[2])
            return 1
        end
        return 0
    end
end
return 0
