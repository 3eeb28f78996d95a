-- scope_add.lua: record that an address unsubscribed from one mailing list. An address's list
-- unsubscribes are one JSON object in one hash field (list -> {"ts", "topic", ...}), so the
-- sender reads all of them with one HMGET; this script is its only read-modify-write on add.
-- The first unsubscribe from a list is kept (as HSETNX keeps the first global reason).
--
-- KEYS[1]  list unsubscribes hash         ({prefix:sup}:unsubscribed)
-- ARGV[1]  address (normalised)
-- ARGV[2]  list name ("*" = every list)
-- ARGV[3]  the entry, JSON object
--
-- Returns 1 when recorded now, 0 when the address had already left that list.
local raw = redis.call("HGET", KEYS[1], ARGV[1])
local lists = {}
if raw then
    local ok, decoded = pcall(cjson.decode, raw)
    if ok and type(decoded) == "table" then
        lists = decoded
    end
end
if lists[ARGV[2]] ~= nil then
    return 0
end
lists[ARGV[2]] = cjson.decode(ARGV[3])
redis.call("HSET", KEYS[1], ARGV[1], cjson.encode(lists))
return 1
