-- pump.lua: top up one partition's `sends` stream from its backlogs, fairly, atomically.
--
-- Jobs wait in backlogs instead of on `sends`: transactional ones in one list per partition
-- (KEYS[5]), bulk ones in one list per topic ({p}:backlog:<topic>). Only a fraction of a second
-- of the rate is handed to the senders at a time, so a transactional job waits behind that much
-- mail at most, a paused topic keeps its place, and topics sending at the same time share the
-- rate.
--
-- Depth: the entries not yet delivered to any sender (after the consumer group's last-delivered
-- ID, at most ARGV[2] + 1 counted) plus those the live senders hold (read, not acknowledged:
-- the pending counts of the consumers that spoke to Redis within ARGV[6] ms; a dead sender's
-- jobs wait for reclaim and do not hold the pump back). Each call adds ARGV[2] minus that.
--
-- Transactional jobs go first. While bulk waits they get at most ARGV[5] of each call's room:
-- a credit (KEYS[6], field `tx_credit`) carries the fraction over, so a room of one job a call
-- still shares fairly and a transactional flood never starves bulk mail.
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
-- KEYS[6]  the pump's own state, hash           ({p}:pump): tx_credit
-- ARGV[1]  consumer group of `sends`
-- ARGV[2]  target: jobs handed to the senders at a time
-- ARGV[3]  quantum: bulk jobs taken from one topic per turn
-- ARGV[4]  bulk backlog key prefix              ("{p}:backlog:"; + topic = the topic's list)
-- ARGV[5]  transactional share of the room at most while bulk waits, 0 < share <= 1
-- ARGV[6]  a consumer idle for this long (ms) is not a live sender
-- ARGV[7]  optional: transactional jobs per second that may skip the pump (dispatch.lua)
-- ARGV[8]  optional: ... and how many of them at once
-- ARGV[9]  optional (with ARGV[7] and ARGV[8]): a sender's consumer name: after the top-up,
--          read for it (XREADGROUP >) ...
-- ARGV[10] ... up to this many entries
--
-- A call that finds room (the senders take mail) publishes that allowance in KEYS[6]
-- (`tx_rate`, `tx_burst`, and `tx_share` = ARGV[5]), valid for 1 s (`tx_until`): while no pump
-- calls, or the senders take nothing (a pause, an outage), every transactional job waits in the
-- backlog. While bulk mail waits, a job that skips the pump also spends the credit below
-- (dispatch.lua), so transactional mail keeps to its share either way.
--
-- A backlog line is "<msg_id>\t<index>\t<address>" or "<msg_id>\t<index>\t<address>\t<data>"
-- (data = compact JSON: never a tab): the job dispatch.lua would have XADDed.
--
-- A sender's reader tops up and reads in one call: its read then costs no round trip of its own,
-- and while the readers read, the pump's own loop has nothing left to do.
--
-- Returns {jobs moved, jobs handed out before (undelivered + held), room left after (0: full)},
-- then, with ARGV[9], each entry read: its ID, its number of field names and values, and those.
local target = tonumber(ARGV[2])
local quantum = tonumber(ARGV[3])
local share = tonumber(ARGV[5])

-- The value of `name` in an XINFO reply's flat list of names and values.
local function field(info, name)
    for i = 1, #info, 2 do
        if info[i] == name then
            return info[i + 1]
        end
    end
    return nil
end

local function top_up()
    local last = nil
    local ok, groups = pcall(redis.call, "XINFO", "GROUPS", KEYS[1])
    if ok then
        for _, group in ipairs(groups) do
            if field(group, "name") == ARGV[1] then
                last = field(group, "last-delivered-id")
            end
        end
    end
    local undelivered
    if last then
        undelivered = #redis.call("XRANGE", KEYS[1], "(" .. last, "+", "COUNT", target + 1)
    else
        undelivered = #redis.call("XRANGE", KEYS[1], "-", "+", "COUNT", target + 1)
    end
    local held = 0
    if last then
        local live = tonumber(ARGV[6])
        for _, consumer in ipairs(redis.call("XINFO", "CONSUMERS", KEYS[1], ARGV[1])) do
            if (field(consumer, "idle") or 0) < live then
                held = held + (field(consumer, "pending") or 0)
            end
        end
    end
    local out = undelivered + held
    local room = target - out
    if room <= 0 then
        return {0, out, 0}
    end
    if ARGV[8] then
        local clock = redis.call("TIME")
        local now = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)
        redis.call("HSET", KEYS[6], "tx_rate", ARGV[7], "tx_burst", ARGV[8], "tx_share", ARGV[5],
            "tx_until", string.format("%d", now + 1000))
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
    local credit = 0
    if bulk_waiting and share < 1 then
        credit = share * room + (tonumber(redis.call("HGET", KEYS[6], "tx_credit")) or 0)
        tx_room = math.min(room, math.floor(credit))
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
    if bulk_waiting and share < 1 then
        -- What was allowed and not taken carries over, up to one job: no burst later.
        credit = math.max(0, math.min(1, credit - moved))
        redis.call("HSET", KEYS[6], "tx_credit", string.format("%.6f", credit))
    end
    if bulk_paused then
        return {moved, out, room}
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
    return {moved, out, room}
end

local reply = top_up()
if ARGV[9] then
    -- pcall: without its group (the stream was deleted) the reader's blocking read that
    -- follows an empty answer fails, as it always did, and the reader creates the group again
    local read = redis.pcall("XREADGROUP", "GROUP", ARGV[1], ARGV[9], "COUNT", tonumber(ARGV[10]),
        "STREAMS", KEYS[1], ">")
    if type(read) ~= "table" or read.err then
        read = false
    end
    -- flat: a nested reply leaves Redis in as many writes as it has levels, and the reader
    -- would wake for each
    for _, entry in ipairs(read and read[1][2] or {}) do
        local fields = entry[2] or {}
        reply[#reply + 1] = entry[1]
        reply[#reply + 1] = #fields
        for _, value in ipairs(fields) do
            reply[#reply + 1] = value
        end
    end
end
return reply
