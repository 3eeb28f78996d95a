-- pump.lua: top up one partition's `sends` stream from its backlogs, fairly, atomically.
--
-- Jobs wait in backlogs instead of on `sends`: transactional ones in one list per partition
-- (KEYS[5]), bulk ones in one list per topic ({p}:backlog:<topic>). `sends` then only holds a
-- fraction of a second of the rate, so a transactional job waits behind that much mail at most,
-- a paused topic keeps its place, and topics sending at the same time share the rate.
--
-- Each call adds what `sends` lacks: ARGV[2] minus the entries not yet delivered to any sender
-- (after the consumer group's last-delivered ID; at most ARGV[2] + 1 counted). Transactional
-- jobs go first. While bulk is waiting they may fill at most ARGV[5] of those ARGV[2] entries
-- (transactional entries carry `l`), so a transactional flood never starves bulk mail.
--
-- Fair share: start-time fair queueing over the topics with a bulk backlog. Each topic has a
-- virtual time (its score in KEYS[2]); the pump serves the lowest, up to ARGV[3] jobs, and
-- advances it by jobs / weight. A topic that joins starts at the lowest virtual time present
-- (dispatch.lua, promote.lua, pause.lua): its share from then on, no credit for time away.
-- Paused topics are not in KEYS[2] (pause.lua); the field "" (no topic is empty) of KEYS[3]
-- pauses all bulk sending.
--
-- KEYS[1]  sends stream                         ({p}:sends)
-- KEYS[2]  topics with a bulk backlog, zset     ({p}:backlog:topics), topic -> virtual time
-- KEYS[3]  paused topics, hash                  ({p}:paused), topic or "" (all bulk) -> JSON
-- KEYS[4]  topic weights, hash                  ({p}:backlog:weights), topic -> weight (not 1)
-- KEYS[5]  transactional backlog, list          ({p}:transactional)
-- ARGV[1]  consumer group of `sends`
-- ARGV[2]  target: undelivered entries wanted on `sends`
-- ARGV[3]  quantum: bulk jobs taken from one topic per turn
-- ARGV[4]  bulk backlog key prefix              ("{p}:backlog:"; + topic = the topic's list)
-- ARGV[5]  transactional share of the target at most while bulk waits, 0 < share <= 1
--
-- A backlog line is "<msg_id>\t<index>\t<address>" or "<msg_id>\t<index>\t<address>\t<data>"
-- (data = compact JSON: never a tab): the job dispatch.lua would have XADDed.
--
-- Returns {jobs moved, undelivered before}.
local target = tonumber(ARGV[2])
local quantum = tonumber(ARGV[3])
local share = tonumber(ARGV[5])

local last = nil
local ok, groups = pcall(redis.call, "XINFO", "GROUPS", KEYS[1])
if ok then
    for _, group in ipairs(groups) do
        local name, delivered = nil, nil
        for i = 1, #group, 2 do
            if group[i] == "name" then
                name = group[i + 1]
            elseif group[i] == "last-delivered-id" then
                delivered = group[i + 1]
            end
        end
        if name == ARGV[1] then
            last = delivered
        end
    end
end
local window
if last then
    window = redis.call("XRANGE", KEYS[1], "(" .. last, "+", "COUNT", target + 1)
else
    window = redis.call("XRANGE", KEYS[1], "-", "+", "COUNT", target + 1)
end
local room = target - #window
if room <= 0 then
    return {0, #window}
end

local function add(line, lane)
    local msg_id, index, address, data =
        string.match(line, "^([^\t]*)\t([^\t]*)\t([^\t]*)\t?(.*)$")
    if not msg_id then
        return
    end
    local job = {"m", msg_id, "i", index, "e", address}
    if data ~= "" then
        job[#job + 1] = "d"
        job[#job + 1] = data
    end
    if lane then
        job[#job + 1] = "l"
        job[#job + 1] = lane
    end
    redis.call("XADD", KEYS[1], "*", unpack(job))
end

local bulk_paused = redis.call("HEXISTS", KEYS[3], "") == 1
local bulk_waiting = not bulk_paused and redis.call("ZCARD", KEYS[2]) > 0
local tx_room = room
if bulk_waiting and share < 1 then
    local tx_queued = 0
    for _, entry in ipairs(window) do
        local fields = entry[2]
        for i = 1, #fields, 2 do
            if fields[i] == "l" then
                tx_queued = tx_queued + 1
            end
        end
    end
    tx_room = math.min(room, math.max(0, math.floor(share * target) - tx_queued))
end

local moved = 0
if tx_room > 0 then
    local lines = redis.call("LPOP", KEYS[5], tx_room)
    if lines then
        for _, line in ipairs(lines) do
            add(line, "t")
        end
        moved = #lines
        room = room - #lines
    end
end
if bulk_paused then
    return {moved, #window}
end

local turns = 0
while room > 0 and turns < 64 do
    turns = turns + 1
    local head = redis.call("ZRANGE", KEYS[2], 0, 0, "WITHSCORES")
    if #head == 0 then
        break
    end
    local topic, vtime = head[1], tonumber(head[2])
    local backlog = ARGV[4] .. topic
    local lines = false
    if redis.call("HEXISTS", KEYS[3], topic) == 0 then
        lines = redis.call("LPOP", backlog, math.min(room, quantum))
    end
    if not lines then
        redis.call("ZREM", KEYS[2], topic)
    else
        for _, line in ipairs(lines) do
            add(line, nil)
        end
        moved = moved + #lines
        room = room - #lines
        if redis.call("LLEN", backlog) == 0 then
            redis.call("ZREM", KEYS[2], topic)
            redis.call("HDEL", KEYS[4], topic)
        else
            local weight = tonumber(redis.call("HGET", KEYS[4], topic) or "1") or 1
            local next_vtime = string.format("%.17g", vtime + #lines / weight)
            redis.call("ZADD", KEYS[2], "XX", next_vtime, topic)
        end
    end
end
return {moved, #window}
