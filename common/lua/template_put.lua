-- template_put.lua: store a new version of a template, atomically: the version counter, the
-- version's JSON, the `current` copy resolved at accept time, and the name index.
--
-- Past versions stay readable (`GET /v1/templates/{name}?version=n`), the newest ARGV[3] of
-- them; older ones are deleted.
--
-- KEYS[1]  the template's hash     ({p:g}:template:<name>)
-- KEYS[2]  index of template names ({p:g}:templates), a zset, score 0
-- ARGV[1]  template name
-- ARGV[2]  the version's JSON without its version number: an object, `{"subject": ...}`
-- ARGV[3]  versions kept
-- ARGV[4]  most templates allowed (a new name beyond it is refused)
--
-- Returns {version, created (1 | 0)}, or {0, 0} when a new name would exceed ARGV[4].
local created = 0
if redis.call("EXISTS", KEYS[1]) == 0 then
    if redis.call("ZCARD", KEYS[2]) >= tonumber(ARGV[4]) then
        return {0, 0}
    end
    created = 1
end
local version = redis.call("HINCRBY", KEYS[1], "version", 1)
local t = redis.call("TIME")
local now = string.format("%d", tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000))
-- The stored JSON starts with its version and time, then the caller's fields.
local body = '{"version":' .. version .. ',"updated_ms":' .. now .. ','
    .. string.sub(ARGV[2], 2)
redis.call("HSET", KEYS[1], tostring(version), body, "current", body, "updated_ms", now)
local old = version - tonumber(ARGV[3])
if old >= 1 then
    redis.call("HDEL", KEYS[1], tostring(old))
end
redis.call("ZADD", KEYS[2], 0, ARGV[1])
return {version, created}
