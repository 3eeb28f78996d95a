-- scope_remove.lua: take an address off one mailing list's unsubscribes, or off all of them.
--
-- KEYS[1]  list unsubscribes hash         ({prefix:sup}:unsubscribed)
-- ARGV[1]  address (normalised)
-- ARGV[2]  list name, or "" for every list
--
-- Returns the number of list unsubscribes removed.
local raw = redis.call("HGET", KEYS[1], ARGV[1])
if not raw then
    return 0
end
local ok, lists = pcall(cjson.decode, raw)
if not ok or type(lists) ~= "table" then
    -- not ours to read: only removing everything may drop it
    if ARGV[2] == "" then
        return redis.call("HDEL", KEYS[1], ARGV[1])
    end
    return 0
end
local removed = 0
if ARGV[2] == "" then
    for _ in pairs(lists) do
        removed = removed + 1
    end
    redis.call("HDEL", KEYS[1], ARGV[1])
    return removed
end
if lists[ARGV[2]] == nil then
    return 0
end
lists[ARGV[2]] = nil
if next(lists) == nil then
    redis.call("HDEL", KEYS[1], ARGV[1])
else
    redis.call("HSET", KEYS[1], ARGV[1], cjson.encode(lists))
end
return 1
