-- rate_limiter.lua: the one send-rate limiter shared by every sender replica (GCRA), with AIMD
-- slow-down on throttling, an optional SES rate ceiling, and a cluster-wide pause.
-- Time is Redis `TIME`, so replicas on machines with skewed clocks still share one schedule.
-- One token = one recipient (SES counts recipients).
--
-- KEYS[1]  the limiter hash ({prefix:rate}); fields:
--            tat    GCRA theoretical arrival time (ms): the schedule is full until then
--            f, fts AIMD factor (0..1] and when it was last set (ms); it recovers additively
--            dec    time of the last decrease (ms): one decrease per cooldown, cluster-wide
--            pause  sending is paused until this time (ms)
--            qrate, qexp  SES MaxSendRate ceiling and when that reading expires (ms)
--            btat   GCRA time of the borrowing schedule (ms): see acquire's ARGV[9]
--
-- ARGV[1]  mode: acquire | throttle | pause | quota | status
-- ARGV[2]  now in ms for tests ("" = Redis TIME; production always passes "")
-- ARGV[3]  configured rate per second (EMAIL_RATE)
-- ARGV[4]  burst (tokens that may go at once)
-- ARGV[5]  floor of the AIMD factor (e.g. 0.05 = never below 5% of the rate)
-- ARGV[6]  AIMD recovery per second (additive, e.g. 0.2 = +20% of the rate per second)
-- acquire:  ARGV[7] tokens wanted (up to; one per waiting job), ARGV[8] max reservation ahead (ms)
--           -> {count, first_ms, interval_ms, now_ms} with count >= 1: `count` consecutive
--              slots granted; slot j (0-based) is allowed first_ms + j * interval_ms from now
--              (<= 0: at once; first_ms is negative when burst credit was left); now_ms is
--              Redis's clock, on which every replica lays the same send grid
--           -> {0, wait_ms}: nothing granted; ask again after wait_ms (paused, or schedule full)
--           ARGV[9] (optional) "urgent", with ARGV[10] borrows per second as a share of the
--           rate in force and ARGV[11] at once: when no slot is free now (burst credit
--           counted), urgent slots are *borrowed*: allowed at once,
--           each pushing the schedule one slot later (the mean rate is kept; a 1-s window
--           holds at most the borrows made in it more), from a budget of their own; when the
--           budget is spent -> {0, wait_ms} (then book as usual). A schedule that is not full
--           books as usual.
--           Numbers are returned as strings (Lua numbers would be truncated to integers).
-- throttle: ARGV[7] multiplicative decrease (e.g. 0.7), ARGV[8] cooldown (ms) -> factor (string)
-- pause:    ARGV[7] duration (ms); extends, never shortens -> paused-until ms (string)
-- quota:    ARGV[7] SES max send rate (0 = forget it), ARGV[8] validity (ms) -> "1"
-- status:   -> {tokens, effective rate, factor, paused ms} as strings

local key = KEYS[1]
local mode = ARGV[1]
local now = tonumber(ARGV[2])
if not now then
    local t = redis.call("TIME")
    now = tonumber(t[1]) * 1000 + tonumber(t[2]) / 1000
end
local base = tonumber(ARGV[3])
local burst = tonumber(ARGV[4])
local floor = tonumber(ARGV[5])
local recovery = tonumber(ARGV[6])

local h = redis.call("HMGET", key, "tat", "f", "fts", "dec", "pause", "qrate", "qexp", "btat")
local tat = tonumber(h[1]) or now
local f = tonumber(h[2]) or 1
local fts = tonumber(h[3]) or now
local pause = tonumber(h[5]) or 0
local qrate = tonumber(h[6])
local qexp = tonumber(h[7]) or 0

-- the AIMD factor now, after additive recovery since it was last set
f = math.min(1, f + math.max(0, now - fts) / 1000 * recovery)
f = math.max(floor, f)
local ceiling = base
if qrate and qrate > 0 and qexp > now and qrate < ceiling then
    ceiling = qrate
end
local rate = ceiling * f
local interval = 1000 / rate

if mode == "acquire" then
    if pause > now then
        return {0, math.ceil(pause - now)}
    end
    local n = tonumber(ARGV[7])
    local max_reserve = tonumber(ARGV[8])
    tat = math.max(tat, now)
    if ARGV[9] == "urgent" and tat + (1 - burst) * interval > now then
        -- the budget is a share of the rate in force (AIMD, the SES ceiling), not EMAIL_RATE
        local binterval = interval / tonumber(ARGV[10])
        local bburst = tonumber(ARGV[11])
        local btat = math.max(tonumber(h[8]) or 0, now - bburst * binterval)
        -- 0.01 ms of slack for the rounding of times near epoch milliseconds
        local count = math.min(n, math.floor((now - btat + 0.01) / binterval))
        if count < 1 then
            return {0, tostring(math.max(1, math.ceil(btat + binterval - now)))}
        end
        redis.call("HSET", key, "tat", tostring(tat + count * interval),
            "btat", string.format("%.3f", btat + count * binterval))
        return {tostring(count), tostring(-count * interval), tostring(interval),
            string.format("%.3f", now)}
    end
    -- slot j (1-based) is allowed at tat + (j - burst) * interval: grant every wanted slot that
    -- is allowed within max_reserve (the epsilon keeps a slot exactly at the edge)
    local fits = math.floor((now + max_reserve - tat) / interval + burst + 1e-9)
    local count = math.min(n, fits)
    if count < 1 then
        local wait = tat + (1 - burst) * interval - now
        return {0, tostring(math.max(1, math.ceil(wait - max_reserve)))}
    end
    redis.call("HSET", key, "tat", tostring(tat + count * interval))
    -- negative when the first slots are burst credit, already allowed before now
    local first = tat + (1 - burst) * interval - now
    return {tostring(count), tostring(first), tostring(interval), string.format("%.3f", now)}
elseif mode == "throttle" then
    local decrease = tonumber(ARGV[7])
    local cooldown = tonumber(ARGV[8])
    local last = tonumber(h[4]) or 0
    if now - last >= cooldown then
        f = math.max(floor, f * decrease)
        -- the schedule restarts at the slower rate: nobody sends in the next slot
        tat = math.max(tat, now + 1000 / (ceiling * f))
        redis.call("HSET", key, "f", tostring(f), "fts", tostring(now), "dec", tostring(now),
            "tat", tostring(tat))
    end
    return tostring(f)
elseif mode == "pause" then
    local untils = math.max(pause, now + tonumber(ARGV[7]))
    redis.call("HSET", key, "pause", tostring(untils))
    return tostring(untils)
elseif mode == "quota" then
    local max_rate = tonumber(ARGV[7])
    if max_rate and max_rate > 0 then
        redis.call("HSET", key, "qrate", tostring(max_rate), "qexp", tostring(now + tonumber(ARGV[8])))
    else
        redis.call("HDEL", key, "qrate", "qexp")
    end
    return "1"
elseif mode == "status" then
    local tokens = 0
    local paused = math.max(0, pause - now)
    if paused == 0 then
        tokens = math.min(burst, math.max(0, (burst * interval - (math.max(tat, now) - now)) / interval))
    end
    return {tostring(tokens), tostring(rate), tostring(f), tostring(paused)}
end
return redis.error_reply("rate_limiter: unknown mode " .. tostring(mode))
