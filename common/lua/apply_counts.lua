-- apply_counts.lua: one stats batch of one partition, atomically: the counters it adds to, the
-- TTL of its series, its per-second hashes and their expiry, the topic index, the dead letters,
-- the XACK of its entries; then the reputation guard's reads of the counters as they now stand.
-- One command instead of a MULTI/EXEC of one command per counter: a batch spread over many
-- topics and time buckets is thousands of them, and a client packs and parses each one.
--
-- KEYS[1]     the partition's events stream                ({p}:events)
-- KEYS[2]     its dead letters                             ({p}:events:dead)
-- KEYS[3]     the topic index, a zset                      ({p}:stats:topics)
-- KEYS[4..]   the hashes written or read, referred to below by their index in KEYS
--
-- ARGV[1]     the group acknowledging (stats)
-- ARGV[2]     the dead letters' approximate MAXLEN
-- ARGV[3..9]  how many of each section follows, in this order:
--   increments  triples   key, field, n          HINCRBY
--   expiries    pairs     key, seconds           EXPIRE
--   expire-ats  pairs     key, epoch seconds     EXPIREAT
--   last seen   pairs     ms, topic              ZADD GT into KEYS[3]
--   dead        entries   n, then n field/value pairs, XADD to KEYS[2] (n < 4,000: the
--                         caller caps a dead letter's fields)
--   reads       entries   key, n, then n fields  HMGET (their replies are returned)
--   acks        ids                              XACK on KEYS[1]
--
-- Returns one reply per read, in order.
local argv = ARGV
local at = 10
local function take()
    local value = argv[at]
    at = at + 1
    return value
end

local increments, expiries, expire_ats = tonumber(argv[3]), tonumber(argv[4]), tonumber(argv[5])
local seen, dead, reads, acks = tonumber(argv[6]), tonumber(argv[7]), tonumber(argv[8]),
    tonumber(argv[9])

for _ = 1, increments do
    local key, field, n = KEYS[tonumber(take())], take(), take()
    redis.call("HINCRBY", key, field, n)
end
for _ = 1, expiries do
    local key, seconds = KEYS[tonumber(take())], take()
    redis.call("EXPIRE", key, seconds)
end
for _ = 1, expire_ats do
    local key, when = KEYS[tonumber(take())], take()
    redis.call("EXPIREAT", key, when)
end
for _ = 1, seen do
    local ms, topic = take(), take()
    redis.call("ZADD", KEYS[3], "GT", ms, topic)
end
for _ = 1, dead do
    local fields = {}
    for _ = 1, 2 * tonumber(take()) do
        fields[#fields + 1] = take()
    end
    redis.call("XADD", KEYS[2], "MAXLEN", "~", argv[2], "*", unpack(fields))
end
-- Long argument lists go in slices: unpack() of more than ~8,000 values overflows Lua's C stack
-- (a batch of 10,000 entries to acknowledge, a guard read of thousands of topics).
local SLICE = 1000
local out = {}
for i = 1, reads do
    local key, fields = KEYS[tonumber(take())], {}
    for _ = 1, tonumber(take()) do
        fields[#fields + 1] = take()
    end
    local values = {}
    for first = 1, #fields, SLICE do
        local last = math.min(first + SLICE - 1, #fields)
        local part = redis.call("HMGET", key, unpack(fields, first, last))
        for j = 1, #part do
            values[#values + 1] = part[j]
        end
    end
    out[i] = values
end
if acks > 0 then
    local ids = {}
    for _ = 1, acks do
        ids[#ids + 1] = take()
    end
    for first = 1, #ids, SLICE do
        local last = math.min(first + SLICE - 1, #ids)
        redis.call("XACK", KEYS[1], argv[1], unpack(ids, first, last))
    end
end
return out
