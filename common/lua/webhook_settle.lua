-- Settle one claimed webhook delivery: delivered (or dropped), to be retried, or dead.
--
-- Only while the lease is still ours (its score is the lease score the claim gave): a
-- delivery whose lease ran out and that another deliverer claimed is that one's to settle.
--
-- KEYS[1] due zset   KEYS[2] deliveries hash   KEYS[3] backlog hash   KEYS[4] dead stream
-- ARGV[1] delivery id   ARGV[2] the lease score   ARGV[3] endpoint id
-- ARGV[4] outcome: done | retry | dead
-- retry: ARGV[5] next due (ms), ARGV[6] the delivery's new data
-- dead:  ARGV[5] dead-letter cap (approximate MAXLEN), ARGV[6..] field, value, ...
-- Returns 1 when settled, 0 when the lease was no longer ours.
local id = ARGV[1]
local score = redis.call('ZSCORE', KEYS[1], id)
if not score or tonumber(score) ~= tonumber(ARGV[2]) then
  return 0
end
local outcome = ARGV[4]
if outcome == 'retry' then
  redis.call('ZADD', KEYS[1], tonumber(ARGV[5]), id)
  redis.call('HSET', KEYS[2], id, ARGV[6])
  return 1
end
redis.call('ZREM', KEYS[1], id)
redis.call('HDEL', KEYS[2], id)
if redis.call('HINCRBY', KEYS[3], ARGV[3], -1) <= 0 then
  redis.call('HDEL', KEYS[3], ARGV[3])
end
if outcome == 'dead' then
  local fields = {}
  for i = 6, #ARGV do fields[#fields + 1] = ARGV[i] end
  redis.call('XADD', KEYS[4], 'MAXLEN', '~', ARGV[5], '*', unpack(fields))
end
return 1
