-- scope_migrate.lua: move global suppressions with reason "unsubscribe" (written before mailing
-- lists existed) to the every-list scope "*": bulk mail of any list still skips them, as it
-- did, while transactional mail reaches them again. Idempotent: a moved address is no longer a
-- global unsubscribe, and an every-list scope already present is kept.
--
-- KEYS[1]  global suppression hash        ({prefix:sup}:suppressed)
-- KEYS[2]  list unsubscribes hash         ({prefix:sup}:unsubscribed)
-- ARGV[j]  addresses to look at (a page of HSCAN)
--
-- Returns the number of addresses moved.
local moved = 0
for j = 1, #ARGV do
    local raw = redis.call("HGET", KEYS[1], ARGV[j])
    local ok, item = false, nil
    if raw then
        ok, item = pcall(cjson.decode, raw)
    end
    if ok and type(item) == "table" and item["reason"] == "unsubscribe" then
        local lists = {}
        local current = redis.call("HGET", KEYS[2], ARGV[j])
        if current then
            local fine, decoded = pcall(cjson.decode, current)
            if fine and type(decoded) == "table" then
                lists = decoded
            end
        end
        if lists["*"] == nil then
            local scope = {ts = item["ts"] or 0, migrated = true}
            if item["topic"] and item["topic"] ~= "" then
                scope["topic"] = item["topic"]
            end
            if item["detail"] and item["detail"] ~= "" then
                scope["detail"] = item["detail"]
            end
            lists["*"] = scope
        end
        redis.call("HSET", KEYS[2], ARGV[j], cjson.encode(lists))
        redis.call("HDEL", KEYS[1], ARGV[j])
        moved = moved + 1
    end
end
return moved
