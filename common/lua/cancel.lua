-- cancel.lua: cancel a topic in one partition: record the stop time and remove the topic's
-- scheduled chunks and bulk backlog lines of messages accepted at or before it, atomically.
--
-- Jobs already on `sends` are stopped by the sender when it claims them (it compares the stop
-- time with the message's accepted time); messages not dispatched yet are stopped by
-- dispatch.lua. Members of the topic set whose chunk was already promoted are stale: dropped.
-- Chunks of messages accepted after the stop time stay (a topic may be reused).
--
-- KEYS[1]  schedule zset                     ({p}:schedule)
-- KEYS[2]  schedule data hash                ({p}:schedule:data)
-- KEYS[3]  the topic's scheduled chunks set  ({p}:schedule:topic:<topic>)
-- KEYS[4]  stop key of the topic             ({p}:stop:<topic>)
-- KEYS[5]  events stream                     ({p}:events)
-- KEYS[6]  the topic's bulk backlog, list     ({p}:backlog:<topic>)
-- KEYS[7]  topics with a bulk backlog, zset   ({p}:backlog:topics)
-- KEYS[8]  topic weights, hash                ({p}:backlog:weights)
-- ARGV[1]  stop time, epoch ms (Redis TIME of the `requests` node, the clock of message ids)
-- ARGV[2]  topic
-- ARGV[3]  TTL of the stop key, ms
--
-- Returns the number of recipients removed (scheduled or in the backlog); records one `stopped`
-- event for them. The backlog is rewritten in one pass: O(its length), once per cancel.
local stop = tonumber(ARGV[1])
local current = tonumber(redis.call("GET", KEYS[4]) or "")
if current and current > stop then
    stop = current
end
redis.call("SET", KEYS[4], string.format("%d", stop), "PX", ARGV[3])

local removed = 0
for _, member in ipairs(redis.call("SMEMBERS", KEYS[3])) do
    local accepted = tonumber(string.match(member, "^(%d+)"))
    if accepted == nil or accepted <= stop then
        local data = redis.call("HGET", KEYS[2], member)
        if data and redis.call("ZREM", KEYS[1], member) == 1 then
            for address in string.gmatch(data .. "\n", "([^\n]*)\n") do
                if address ~= "" then
                    removed = removed + 1
                end
            end
        end
        redis.call("ZREM", KEYS[1], member)
        redis.call("HDEL", KEYS[2], member)
        redis.call("SREM", KEYS[3], member)
    end
end

local kept = {}
local backlog = redis.call("LRANGE", KEYS[6], 0, -1)
for _, line in ipairs(backlog) do
    local accepted = tonumber(string.match(line, "^(%d+)"))
    if accepted == nil or accepted <= stop then
        removed = removed + 1
    else
        kept[#kept + 1] = line
    end
end
if #kept < #backlog then
    redis.call("DEL", KEYS[6])
    for start = 1, #kept, 1000 do
        redis.call("RPUSH", KEYS[6], unpack(kept, start, math.min(start + 999, #kept)))
    end
    if #kept == 0 then
        redis.call("ZREM", KEYS[7], ARGV[2])
        redis.call("HDEL", KEYS[8], ARGV[2])
    end
end

if removed > 0 then
    local t = redis.call("TIME")
    local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
    redis.call("XADD", KEYS[5], "*", "e", '{"type":"stopped","ts":' .. string.format("%d", now)
        .. ',"topic":' .. cjson.encode(ARGV[2]) .. ',"index":-1,"n":'
        .. string.format("%d", removed) .. ',"detail":"topic cancelled"}')
end
return removed
