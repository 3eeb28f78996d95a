-- park.lua: take a job whose SES setup is paused off `sends` and keep it aside, atomically.
--
-- A job parked holds no sender slot and no place in the pump's depth (`sender.parking`): the
-- messages of every other setup keep the full rate while one configuration set or tenant is
-- paused. Its delivery state is untouched (queued); only the entry moves: acknowledged on
-- `sends` and its backlog line appended to the scope's list, in one step, so the job is always
-- in exactly one of the two places. An entry no longer pending for this consumer (another
-- replica reclaimed it) is left alone.
--
-- KEYS[1]  sends stream                          ({p}:sends)
-- KEYS[2]  the scope's parked jobs, list          ({p}:parked:<scope>)
-- KEYS[3]  scopes with parked jobs, set           ({p}:parked)
-- ARGV[1]  consumer group of `sends`
-- ARGV[2]  this consumer
-- ARGV[3]  the job's entry id on `sends`
-- ARGV[4]  the scope (`sender.setup_faults`)
-- ARGV[5]  the job's backlog line "<msg_id>\t<index>\t<address>[\t<data>]" (as dispatch.lua)
--
-- Returns 1 when parked, 0 when the entry was not pending for this consumer.
local pending = redis.call("XPENDING", KEYS[1], ARGV[1], ARGV[3], ARGV[3], 1, ARGV[2])
if #pending == 0 then
    return 0
end
redis.call("XACK", KEYS[1], ARGV[1], ARGV[3])
redis.call("RPUSH", KEYS[2], ARGV[5])
redis.call("SADD", KEYS[3], ARGV[4])
return 1
