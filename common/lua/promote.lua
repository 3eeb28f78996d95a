-- promote.lua: move scheduled chunks that are due into the sends stream, atomically.
--
-- Reads at most ARGV[1] due chunks (ZRANGEBYSCORE ... LIMIT), so one call is short and nothing
-- scans the whole schedule; the caller calls again while a full batch was moved. Due time is
-- Redis TIME, so every scheduler agrees. A chunk's data is one line per recipient, joined by
-- "\n", for consecutive indexes starting at the member's first index: the address, then a tab
-- and the recipient's own merge data (compact JSON) when there is some; the job gets it as field
-- `d`. An empty line is a recipient that was suppressed at dispatch and gets no job. (Chunks
-- written before merge data existed are addresses alone: read the same way.)
--
-- KEYS[1]  schedule zset          ({p}:schedule), member "<msg_id>:<first index>", score due ms
-- KEYS[2]  schedule data hash     ({p}:schedule:data)
-- KEYS[3]  sends stream           ({p}:sends)
-- KEYS[4]  topics with a bulk backlog, zset   ({p}:backlog:topics)
-- KEYS[5]  paused topics, hash                ({p}:paused)
-- KEYS[6]  topic weights, hash                ({p}:backlog:weights)
-- KEYS[7]  transactional backlog, list        ({p}:transactional)
-- ARGV[1]  maximum number of chunks to move in this call
-- ARGV[2]  the partition's key prefix ("{p}:"): + "msg:<msg_id>" is the message's content hash,
--          + "backlog:<topic>" its topic's bulk backlog
--
-- A chunk goes where dispatch.lua puts mail due now: the transactional backlog, or its topic's
-- bulk backlog (see pump.lua), where a paused topic's jobs wait for resume. One whose content is
-- gone goes straight to `sends`: the sender then records `no_content`.
--
-- Returns {chunks moved, jobs added}
local t = redis.call("TIME")
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local due = redis.call("ZRANGEBYSCORE", KEYS[1], "-inf", now, "LIMIT", 0, tonumber(ARGV[1]))
local jobs = 0
for _, member in ipairs(due) do
    local msg_id, first = string.match(member, "^(.+):(%d+)$")
    local data = redis.call("HGET", KEYS[2], member)
    if msg_id and data then
        local content = redis.call("HMGET", ARGV[2] .. "msg:" .. msg_id, "topic", "lane", "weight")
        local topic, lane, weight = content[1], content[2], content[3]
        local backlog = false
        if lane == "transactional" then
            backlog = KEYS[7]
        elseif topic then
            backlog = ARGV[2] .. "backlog:" .. topic
        end
        local lines = {}
        local index = tonumber(first)
        for line in string.gmatch(data .. "\n", "([^\n]*)\n") do
            if line ~= "" then
                local i = string.format("%d", index)
                if backlog then
                    lines[#lines + 1] = msg_id .. "\t" .. i .. "\t" .. line
                else
                    local address, own = string.match(line, "^([^\t]*)\t(.*)$")
                    if address then
                        redis.call("XADD", KEYS[3], "*", "m", msg_id, "i", i, "e", address,
                            "d", own)
                    else
                        redis.call("XADD", KEYS[3], "*", "m", msg_id, "i", i, "e", line)
                    end
                end
                jobs = jobs + 1
            end
            index = index + 1
        end
        if backlog and #lines > 0 then
            redis.call("RPUSH", backlog, unpack(lines))
            if lane ~= "transactional" then
                if weight then
                    redis.call("HSET", KEYS[6], topic, weight)
                end
                if redis.call("HEXISTS", KEYS[5], topic) == 0 then
                    local head = redis.call("ZRANGE", KEYS[4], 0, 0, "WITHSCORES")
                    redis.call("ZADD", KEYS[4], "NX", head[2] or 0, topic)
                end
            end
        end
    end
    redis.call("ZREM", KEYS[1], member)
    redis.call("HDEL", KEYS[2], member)
end
return {#due, jobs}
