-- dispatch.lua: turn one chunk of a message's recipients into jobs, atomically and idempotently.
--
-- The dispatcher calls it once per chunk (<= 1000 recipients), in order of `first`. The content
-- hash keeps a marker `dispatched` = index after the last chunk done, so running a chunk again
-- (redelivery after a crash, or two consumers on one entry) changes nothing: a call whose
-- `first` is not the marker only returns the marker, and the caller resumes from there.
-- The call for chunk 0 also stores the content and records the message's `accepted` event
-- (and `rejected` for addresses the dispatcher dropped). Each chunk records `suppressed` for
-- its suppressed recipients; if the topic was cancelled at or after the message's accepted
-- time, the chunk's recipients are recorded `stopped` instead of queued.
--
-- KEYS[1]  content hash of the message       ({p}:msg:<msg_id>)
-- KEYS[2]  sends stream                      ({p}:sends)
-- KEYS[3]  schedule zset                     ({p}:schedule)
-- KEYS[4]  schedule data hash                ({p}:schedule:data)
-- KEYS[5]  the topic's scheduled chunks set  ({p}:schedule:topic:<topic>)
-- KEYS[6]  stop key of the topic             ({p}:stop:<topic>)
-- KEYS[7]  events stream                     ({p}:events)
-- KEYS[8]  the topic's bulk backlog, list     ({p}:backlog:<topic>)
-- KEYS[9]  topics with a bulk backlog, zset   ({p}:backlog:topics)
-- KEYS[10] paused topics, hash                ({p}:paused)
-- KEYS[11] topic weights, hash                ({p}:backlog:weights)
-- KEYS[12] transactional backlog, list        ({p}:transactional)
-- KEYS[13] the pump's own state, hash         ({p}:pump): the direct transactional allowance
-- ARGV[1]  msg_id (its first part is the accepted time, ms)
-- ARGV[2]  first: index of the chunk's first recipient
-- ARGV[3]  due time, epoch ms (0 = now; a past time also means now)
-- ARGV[4]  content TTL, ms (the schedule delay is added)
-- ARGV[5]  topic
-- ARGV[6]  accepted: valid recipients of the whole message (chunk 0 only)
-- ARGV[7]  rejected: invalid recipients the dispatcher dropped (chunk 0 only)
-- ARGV[8]  why they were rejected
-- ARGV[9]  recipients per scheduled chunk (schedule member size)
-- ARGV[10] c: how many content field/value pairs follow (chunk 0 only; 0 otherwise)
-- ARGV[11 .. 10+2c] the content hash's fields and values (`MessageContent.to_hash`)
-- ARGV[11+2c ..] the chunk's recipients, two arguments each, index first, first+1, ...:
--          address ("" = suppressed, no job), own merge data (compact JSON, "" = none)
--
-- Due now, a message's recipients go to a backlog, one line each
-- ("<msg_id>\t<index>\t<address>[\t<data>]"): the partition's transactional backlog when the
-- content's `lane` says so, else its topic's bulk backlog; pump.lua moves them to `sends`.
-- Transactional jobs skip the wait for the pump while the pump allows it: when nothing waits in
-- the transactional backlog before them, up to the allowance a live pump publishes in KEYS[13]
-- (`tx_rate` jobs per second, `tx_burst` at once, until `tx_until`; one GCRA schedule in
-- `tx_tat`) go straight to `sends` as the pump would add them; the rest go to the backlog.
-- While bulk mail waits they also spend the pump's transactional credit (`tx_credit`, at most
-- one job between two pump calls), so together with what the pump moves they keep to the
-- transactional share (`tx_share`) of the room, as a flood through the backlog does.
-- A job carries its recipient's data as field `d` (only when there is some). A scheduled chunk
-- stores one line per recipient: the address, then a tab and the data when there is some
-- (neither an address nor compact JSON holds a tab or a line break; see promote.lua).
--
-- Returns {marker, outcome}: outcome "queued" | "scheduled" | "stopped" | "skipped"
-- ("skipped": this chunk was not the next one; marker says which is).
-- Numbers computed here are written with string.format("%d"): Redis may print a large Lua
-- number with an exponent, which it then refuses as an integer.
local pairs_count = tonumber(ARGV[10])
local FIXED = 10 + 2 * pairs_count
local msg_id = ARGV[1]
local first = tonumber(ARGV[2])
local done = tonumber(redis.call("HGET", KEYS[1], "dispatched") or "0")
if first ~= done then
    return {done, "skipped"}
end

local t = redis.call("TIME")
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local due = tonumber(ARGV[3])
local accepted_ms = tonumber(string.match(msg_id, "^(%d+)")) or 0
local topic = ARGV[5]
local delay = 0
if due > now then
    delay = due - now
end
local ttl = tonumber(ARGV[4]) + delay

local function event(kind, n, detail)
    local json = '{"type":' .. cjson.encode(kind) .. ',"ts":' .. string.format("%d", now)
        .. ',"topic":' .. cjson.encode(topic) .. ',"msg_id":' .. cjson.encode(msg_id)
        .. ',"index":-1,"n":' .. string.format("%d", n)
    if detail ~= "" then
        json = json .. ',"detail":' .. cjson.encode(detail)
    end
    redis.call("XADD", KEYS[7], "*", "e", json .. "}")
end

local count = (#ARGV - FIXED) / 2
if first == 0 then
    if pairs_count > 0 then
        redis.call("HSET", KEYS[1], unpack(ARGV, 11, FIXED))
    end
    -- These three are the script's own, whatever the caller sent.
    redis.call("HSET", KEYS[1], "topic", topic, "total", 0,
        "accepted_ms", string.format("%d", accepted_ms))
    event("accepted", tonumber(ARGV[6]), "")
    if tonumber(ARGV[7]) > 0 then
        event("rejected", tonumber(ARGV[7]), ARGV[8])
    end
end
redis.call("HSET", KEYS[1], "dispatched", first + count)
redis.call("PEXPIRE", KEYS[1], string.format("%d", ttl))

-- How many of `n` transactional jobs may go straight to `sends` now (the pump's allowance;
-- while bulk mail waits, also the pump's transactional credit, which they spend).
local function direct_room(n)
    local pump = redis.call("HMGET", KEYS[13], "tx_rate", "tx_burst", "tx_until", "tx_tat",
        "tx_share", "tx_credit")
    local rate, burst = tonumber(pump[1]), tonumber(pump[2])
    if not rate or rate <= 0 or not burst or (tonumber(pump[3]) or 0) < now then
        return 0 -- no live pump, or the senders take nothing: the backlog, as before
    end
    local interval = 1000 / rate
    local tat = math.max(tonumber(pump[4]) or 0, now - burst * interval)
    -- 0.01 ms of slack for the rounding of times near epoch milliseconds
    local room = math.min(n, math.floor((now - tat + 0.01) / interval))
    local bulk_waits = redis.call("ZCARD", KEYS[9]) > 0
        and redis.call("HEXISTS", KEYS[10], "") == 0
    local credit = tonumber(pump[6]) or 0
    if bulk_waits and (tonumber(pump[5]) or 1) < 1 then
        room = math.min(room, math.floor(credit))
        credit = credit - math.max(0, room)
    end
    if room <= 0 then
        return 0
    end
    redis.call("HSET", KEYS[13], "tx_tat", string.format("%.3f", tat + room * interval),
        "tx_credit", string.format("%.6f", credit))
    return room
end

-- The address and the data of the chunk's k-th recipient (k from 0).
local function recipient(k)
    return ARGV[FIXED + 2 * k + 1], ARGV[FIXED + 2 * k + 2]
end

local live = 0
for k = 0, count - 1 do
    if recipient(k) ~= "" then
        live = live + 1
    end
end
if count > live then
    event("suppressed", count - live, "")
end
if live == 0 then
    return {first + count, "queued"}
end

local stop = tonumber(redis.call("GET", KEYS[6]) or "")
if stop and stop >= accepted_ms then
    event("stopped", live, "topic cancelled")
    return {first + count, "stopped"}
end

redis.call("HINCRBY", KEYS[1], "total", live)
if delay == 0 then
    local lines = {}
    for k = 0, count - 1 do
        local address, data = recipient(k)
        if address ~= "" then
            local line = msg_id .. "\t" .. string.format("%d", first + k) .. "\t" .. address
            if data ~= "" then
                line = line .. "\t" .. data
            end
            lines[#lines + 1] = line
        end
    end
    if redis.call("HGET", KEYS[1], "lane") == "transactional" then
        local direct = 0
        if redis.call("LLEN", KEYS[12]) == 0 then
            direct = direct_room(#lines)
        end
        for k = 1, direct do
            local index, address, data =
                string.match(lines[k], "^[^\t]*\t([^\t]*)\t([^\t]*)\t?(.*)$")
            local job = {"m", msg_id, "i", index, "e", address}
            if data ~= "" then
                job[#job + 1] = "d"
                job[#job + 1] = data
            end
            job[#job + 1] = "l"
            job[#job + 1] = "t"
            redis.call("XADD", KEYS[2], "*", unpack(job))
        end
        if direct < #lines then
            redis.call("RPUSH", KEYS[12], unpack(lines, direct + 1))
        end
        return {first + count, "queued"}
    end
    redis.call("RPUSH", KEYS[8], unpack(lines))
    local weight = redis.call("HGET", KEYS[1], "weight")
    if weight then
        redis.call("HSET", KEYS[11], topic, weight)
    end
    if redis.call("HEXISTS", KEYS[10], topic) == 0 then
        local head = redis.call("ZRANGE", KEYS[9], 0, 0, "WITHSCORES")
        redis.call("ZADD", KEYS[9], "NX", head[2] or 0, topic)
    end
    return {first + count, "queued"}
end

local size = tonumber(ARGV[9])
for start = 0, count - 1, size do
    local lines = {}
    local any = false
    for k = start, math.min(start + size, count) - 1 do
        local address, data = recipient(k)
        if address == "" then
            lines[#lines + 1] = ""
        else
            any = true
            lines[#lines + 1] = data ~= "" and (address .. "\t" .. data) or address
        end
    end
    if any then
        local member = msg_id .. ":" .. string.format("%d", first + start)
        redis.call("ZADD", KEYS[3], ARGV[3], member)
        redis.call("HSET", KEYS[4], member, table.concat(lines, "\n"))
        redis.call("SADD", KEYS[5], member)
    end
end
-- The topic set only serves cancel; it may outlive its chunks (stale members are ignored).
if redis.call("PTTL", KEYS[5]) < ttl then
    redis.call("PEXPIRE", KEYS[5], string.format("%d", ttl))
end
return {first + count, "scheduled"}
