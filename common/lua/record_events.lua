-- record_events: append the tracker's events to one partition's `events` stream, atomically with
-- the marks that make them count once (SNS delivery dedupe, first open / click / unsubscribe).
--
-- KEYS[1]  events stream of the partition                      ({p}:events)
-- KEYS[2]  first-touch hash of the message: field -> first ms  ({p}:opens:<msg_id>)
-- KEYS[3]  optional: dedupe mark of one SNS delivery           ({p}:sns:<MessageId>)
--
-- ARGV[1]  TTL of the dedupe mark, seconds (read only when KEYS[3] is given)
-- ARGV[2]  TTL of the first-touch hash, seconds (refreshed whenever a field is touched)
-- ARGV[3]  now, epoch ms (the value stored for a first touch)
-- ARGV[4..] triples, one per event:
--           field   first-touch field ("" = no first-touch logic: always add `first`)
--           first   event JSON to add when the field was new (or always when field is "")
--           again   event JSON to add when the field already existed ("" = add nothing)
--
-- Returns -1 when the dedupe mark already existed (a duplicate delivery: nothing is written),
-- otherwise the number of entries added. Each entry has the single field `e` (the event JSON).

if #KEYS >= 3 then
  if not redis.call('SET', KEYS[3], '1', 'NX', 'EX', ARGV[1]) then
    return -1
  end
end

local added = 0
local touched = false
for i = 4, #ARGV, 3 do
  local field, payload = ARGV[i], ARGV[i + 1]
  if field ~= '' then
    touched = true
    if redis.call('HSETNX', KEYS[2], field, ARGV[3]) == 0 then
      payload = ARGV[i + 2]
    end
  end
  if payload ~= '' then
    redis.call('XADD', KEYS[1], '*', 'e', payload)
    added = added + 1
  end
end
if touched then
  redis.call('EXPIRE', KEYS[2], ARGV[2])
end
return added
