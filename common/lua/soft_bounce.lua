-- soft_bounce: count one soft bounce of one address, and answer how many it had in the window.
--
-- The bounce is a member named after the bounced mail, so counting the same bounce again (an SNS
-- redelivery, or the same bounce published to two topics) changes nothing: idempotent.
--
-- KEYS[1]  the address's soft bounces: zset member -> bounce time ms    (sesflow:softbounce:<a>)
--
-- ARGV[1]  member: the SES MessageId of the bounced mail
-- ARGV[2]  bounce time, epoch ms (taken as now when later than now)
-- ARGV[3]  now, epoch ms
-- ARGV[4]  window, ms: bounces at or before now - window no longer count
-- ARGV[5]  limit: the most members kept (the newest); reaching it is what matters
--
-- Returns the number of soft bounces of the address within the window (this one included unless
-- it is older than the window), at most the limit. The key expires one window after the last
-- write, and is gone when nothing is left in the window.

local now = tonumber(ARGV[3])
local window = tonumber(ARGV[4])
local at = math.min(tonumber(ARGV[2]), now)
local cutoff = now - window

if at > cutoff then
  redis.call('ZADD', KEYS[1], 'NX', at, ARGV[1])
end
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', cutoff)
redis.call('ZREMRANGEBYRANK', KEYS[1], 0, -(tonumber(ARGV[5]) + 1))
local count = redis.call('ZCARD', KEYS[1])
if count > 0 then
  redis.call('PEXPIRE', KEYS[1], window)
end
return count
