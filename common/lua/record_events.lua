-- record_events: append the tracker's events to one partition's `events` stream, atomically with
-- the marks that make them count once (SNS delivery dedupe, first open / click / unsubscribe).
--
-- First touches are bits of the message's touch string: bit 4*index + kind (0 open, 1 click,
-- 2 unsubscribe). A first touch an older version recorded (a field of the message's `opens`
-- hash) counts too. An SNS delivery's dedupe mark is a field (an 8-byte digest of its
-- MessageId) of the partition's dedupe hash of today and the digest's bucket; a delivery is a
-- duplicate when its field is in the hash of any day of the dedupe window, or when an older
-- version's per-delivery mark exists.
--
-- KEYS[1]  events stream of the partition                     ({p}:events)
-- KEYS[2]  touch string of the message                        ({p}:touch:<msg_id>)
-- KEYS[3]  first-touch hash older versions wrote (read only)  ({p}:opens:<msg_id>)
-- KEYS[4..3+d]  optional (d = ARGV[4]): the dedupe hashes ({p}:snsd:<day>:<bucket>), today's
--          first (the one written), then the earlier days of the window (read only)
-- KEYS[4+d]     with d > 0: the older version's dedupe mark of this delivery  ({p}:sns:<id>)
--
-- ARGV[1]  dedupe field: the 8-byte digest of the SNS MessageId (read only when d > 0)
-- ARGV[2]  expiry of today's dedupe hash, epoch seconds (EXPIREAT)
-- ARGV[3]  TTL of the touch string, seconds (refreshed whenever a bit is set)
-- ARGV[4]  d: number of dedupe hashes (0 = no dedupe)
-- ARGV[5..] quadruples, one per event:
--           bit     first-touch bit offset ("" = no first-touch logic: always add `first`)
--           field   the same first touch's field in the older `opens` hash
--           first   event JSON to add when the touch is new (or always when bit is "")
--           again   event JSON to add when it was touched before ("" = add nothing)
--
-- Returns -1 when the delivery was recorded before (a duplicate: nothing is written),
-- otherwise the number of entries added. Each entry has the single field `e` (the event JSON).

local d = tonumber(ARGV[4])
if d > 0 then
  if redis.call('EXISTS', KEYS[4 + d]) == 1 then
    return -1
  end
  for k = 4, 3 + d do
    if redis.call('HEXISTS', KEYS[k], ARGV[1]) == 1 then
      return -1
    end
  end
  redis.call('HSET', KEYS[4], ARGV[1], '')
  redis.call('EXPIREAT', KEYS[4], ARGV[2])
end

local added = 0
local touched = false
for i = 5, #ARGV, 4 do
  local bit, payload = ARGV[i], ARGV[i + 2]
  if bit ~= '' then
    if redis.call('SETBIT', KEYS[2], bit, 1) == 1
        or redis.call('HEXISTS', KEYS[3], ARGV[i + 1]) == 1 then
      payload = ARGV[i + 3]
    end
    touched = true
  end
  if payload ~= '' then
    redis.call('XADD', KEYS[1], '*', 'e', payload)
    added = added + 1
  end
end
if touched then
  redis.call('EXPIRE', KEYS[2], ARGV[3])
end
return added
