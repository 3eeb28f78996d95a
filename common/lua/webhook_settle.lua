-- Settle claimed webhook deliveries of one partition, several in one call: each delivered (or
-- dropped), to be retried, or dead.
--
-- Only while a lease is still ours (the delivery's score is the lease score the claim gave): a
-- delivery whose lease ran out and that another deliverer claimed is that one's to settle. So a
-- settlement sent twice (a reply lost, the call made again) changes nothing the second time.
--
-- KEYS[1] due zset   KEYS[2] deliveries hash   KEYS[3] backlog hash   KEYS[4] dead stream
-- ARGV[1] dead-letter cap (approximate MAXLEN)
-- ARGV[2..] the settlements, one after the other, each:
--   delivery id, the lease score, endpoint id, outcome (done | retry | dead), n, then n values:
--   done:  none (n = 0)
--   retry: next due (ms), the delivery's new data (n = 2)
--   dead:  field, value, ... of the dead letter
-- Returns, in order, 1 per settlement settled, 0 per one whose lease was no longer ours.
local cap = ARGV[1]
local out = {}
local i = 2
while i <= #ARGV do
  local id, lease, endpoint, outcome = ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3]
  local n = tonumber(ARGV[i + 4])
  local first = i + 5
  i = first + n
  local score = redis.call('ZSCORE', KEYS[1], id)
  if not score or tonumber(score) ~= tonumber(lease) then
    out[#out + 1] = 0
  elseif outcome == 'retry' then
    redis.call('ZADD', KEYS[1], tonumber(ARGV[first]), id)
    redis.call('HSET', KEYS[2], id, ARGV[first + 1])
    out[#out + 1] = 1
  else
    redis.call('ZREM', KEYS[1], id)
    redis.call('HDEL', KEYS[2], id)
    if redis.call('HINCRBY', KEYS[3], endpoint, -1) <= 0 then
      redis.call('HDEL', KEYS[3], endpoint)
    end
    if outcome == 'dead' then
      local fields = {}
      for f = first, first + n - 1 do fields[#fields + 1] = ARGV[f] end
      redis.call('XADD', KEYS[4], 'MAXLEN', '~', cap, '*', unpack(fields))
    end
    out[#out + 1] = 1
  end
end
return out
