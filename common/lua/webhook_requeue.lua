-- Put a dead-lettered webhook delivery back on its partition's queue, due now, and delete the
-- dead letter: both or neither (`sesflow dlq replay`).
--
-- KEYS[1] due zset   KEYS[2] deliveries hash   KEYS[3] backlog hash   KEYS[4] dead stream
-- ARGV[1] dead letter id   ARGV[2] delivery id   ARGV[3] endpoint id   ARGV[4] now (ms)
-- ARGV[5] the delivery's data
-- Returns 1 when requeued, 0 when the dead letter is gone, -1 when the delivery is queued.
if #redis.call('XRANGE', KEYS[4], ARGV[1], ARGV[1]) == 0 then
  return 0
end
if redis.call('HEXISTS', KEYS[2], ARGV[2]) == 1 then
  return -1
end
redis.call('HSET', KEYS[2], ARGV[2], ARGV[5])
redis.call('ZADD', KEYS[1], tonumber(ARGV[4]), ARGV[2])
redis.call('HINCRBY', KEYS[3], ARGV[3], 1)
redis.call('XDEL', KEYS[4], ARGV[1])
return 1
