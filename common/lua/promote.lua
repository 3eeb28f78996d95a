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
-- ARGV[1]  maximum number of chunks to move in this call
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
        local index = tonumber(first)
        for line in string.gmatch(data .. "\n", "([^\n]*)\n") do
            if line ~= "" then
                local address, own = string.match(line, "^([^\t]*)\t(.*)$")
                local i = string.format("%d", index)
                if address then
                    redis.call("XADD", KEYS[3], "*", "m", msg_id, "i", i, "e", address, "d", own)
                else
                    redis.call("XADD", KEYS[3], "*", "m", msg_id, "i", i, "e", line)
                end
                jobs = jobs + 1
            end
            index = index + 1
        end
    end
    redis.call("ZREM", KEYS[1], member)
    redis.call("HDEL", KEYS[2], member)
end
return {#due, jobs}
