-- unpark.lua: give up to ARGV[2] parked jobs of one scope back to their backlogs, atomically.
--
-- Called once the scope's pause is lifted (or dropped). Each line goes where dispatch.lua would
-- have put it, by its message's content hash (found through ARGV[3] .. "msg:" .. msg_id, a key
-- of this partition): the transactional backlog for a transactional message, else the end of
-- its topic's bulk backlog, the topic joining the fair share at the lowest virtual time present
-- unless it is paused. A line whose content is gone goes to the transactional backlog: its
-- sender decides it at once (no_content), spending no rate token.
--
-- KEYS[1]  the scope's parked jobs, list          ({p}:parked:<scope>)
-- KEYS[2]  scopes with parked jobs, set           ({p}:parked)
-- KEYS[3]  transactional backlog, list            ({p}:transactional)
-- KEYS[4]  topics with a bulk backlog, zset       ({p}:backlog:topics)
-- KEYS[5]  paused topics, hash                    ({p}:paused)
-- KEYS[6]  topic weights, hash                    ({p}:backlog:weights)
-- ARGV[1]  the scope
-- ARGV[2]  most jobs moved by this call
-- ARGV[3]  the partition's key prefix             ("{p}:")
--
-- Returns {jobs moved, jobs still parked}; the scope leaves KEYS[2] once none is left.
local lines = redis.call("LPOP", KEYS[1], tonumber(ARGV[2]))
local moved = 0
if lines then
    for _, line in ipairs(lines) do
        local msg_id = string.match(line, "^([^\t]*)\t")
        local lane, topic, weight = false, false, false
        if msg_id then
            local content = redis.call("HMGET", ARGV[3] .. "msg:" .. msg_id, "lane", "topic", "weight")
            lane, topic, weight = content[1], content[2], content[3]
        end
        if lane == "transactional" or not topic then
            redis.call("RPUSH", KEYS[3], line)
        else
            redis.call("RPUSH", ARGV[3] .. "backlog:" .. topic, line)
            if weight then
                redis.call("HSET", KEYS[6], topic, weight)
            end
            if redis.call("HEXISTS", KEYS[5], topic) == 0 then
                local head = redis.call("ZRANGE", KEYS[4], 0, 0, "WITHSCORES")
                redis.call("ZADD", KEYS[4], "NX", head[2] or 0, topic)
            end
        end
        moved = moved + 1
    end
end
local left = redis.call("LLEN", KEYS[1])
if left == 0 then
    redis.call("SREM", KEYS[2], ARGV[1])
end
return {moved, left}
