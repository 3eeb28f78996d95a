-- Claim due webhook deliveries of one partition under a lease.
--
-- A claimed delivery's score becomes the end of its lease (now + lease): should its deliverer
-- die, it is due again then and another one takes it (at-least-once). Deliveries are taken in
-- the order of the zset (due time, then id: the order of the events), skipping those of an
-- endpoint whose budget (free calls in this process) is used up, so an endpoint's deliveries
-- start in order and none waits in memory while its lease runs.
--
-- KEYS[1] due zset        KEYS[2] deliveries hash
-- ARGV[1] now (ms)        ARGV[2] lease (ms)      ARGV[3] most to take
-- ARGV[4] most to look at ARGV[5] budget of an endpoint not listed
-- ARGV[6..] endpoint id, its budget, ... (endpoints this process is calling)
-- Returns {id, lease score, data, id, lease score, data, ...}.
local now = tonumber(ARGV[1])
local lease_until = now + tonumber(ARGV[2])
local want = tonumber(ARGV[3])
local default_budget = tonumber(ARGV[5])
local budget = {}
for i = 6, #ARGV, 2 do
  budget[ARGV[i]] = tonumber(ARGV[i + 1])
end
local out = {}
local taken = 0
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, tonumber(ARGV[4]))
for _, id in ipairs(due) do
  if taken >= want then break end
  local endpoint = string.match(id, '%.([^.]+)$') or ''
  local left = budget[endpoint] or default_budget
  if left > 0 then
    local data = redis.call('HGET', KEYS[2], id)
    if data then
      budget[endpoint] = left - 1
      redis.call('ZADD', KEYS[1], lease_until, id)
      out[#out + 1] = id
      out[#out + 1] = tostring(lease_until)
      out[#out + 1] = data
      taken = taken + 1
    else
      redis.call('ZREM', KEYS[1], id)  -- no data: nothing to deliver
    end
  end
end
return out
