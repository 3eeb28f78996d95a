-- stats_read.lua: read many hashes (and lists' lengths) of one partition in one call. The
-- dashboard reads several hashes per topic for dozens of topics, the archive the subject, lane
-- and schedule of every message a batch accepted; as separate commands, packing and parsing them
-- one by one cost more than Redis's work.
--
-- KEYS[1..n]        hashes read whole (HGETALL)                ({p}:stats:topic:<t> ...)
-- KEYS[n+1..n+m]    lists read for their length (LLEN)         ({p}:backlog:<t> ...)
-- KEYS[n+m+1..]     hashes read for the fields ARGV[3..] (HMGET) ({p}:stats:seconds:<m>:<t> ...)
-- ARGV[1]           n
-- ARGV[2]           m
-- ARGV[3..]         the fields of the HMGET reads
--
-- Returns one reply per key, in KEYS order: a flat field/value array (HGETALL), a length
-- (LLEN), or the values of the fields, false where missing (HMGET).
local whole = tonumber(ARGV[1])
local lists = whole + tonumber(ARGV[2])
local fields = {}
for i = 3, #ARGV do
    fields[#fields + 1] = ARGV[i]
end
local out = {}
for i, key in ipairs(KEYS) do
    if i <= whole then
        out[i] = redis.call("HGETALL", key)
    elseif i <= lists then
        out[i] = redis.call("LLEN", key)
    else
        out[i] = redis.call("HMGET", key, unpack(fields))
    end
end
return out
