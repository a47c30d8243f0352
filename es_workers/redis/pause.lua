-- pause.lua: a rebuild holds, renews or lifts its subscriber's pause on one partition.
-- layout KEYS: paused
-- layout ARGV: token action [ms]
-- layout items: i from 0
--
-- KEYS[1] paused  {tag}:paused:<subscriber>  string: the rebuild's token, expiring unless
--                 renewed; while it exists begin.lua begins none of the subscriber's
--                 entities of the partition
-- ARGV[1] the rebuild's token, ARGV[2] 'hold', 'renew' or 'lift', ARGV[3] ms to live
-- (hold, renew)
--
-- Returns 1 when done; 0 when the pause is another rebuild's (hold) or no longer ours
-- (renew, lift: it expired, and may have been taken since).

local paused, token, action, ms = KEYS[1], ARGV[1], ARGV[2], ARGV[3]
local holder = redis.call('GET', paused)
if action == 'hold' and not holder then
  redis.call('SET', paused, token, 'PX', ms)
  return 1
end
if holder ~= token then
  return 0
end
if action == 'lift' then
  redis.call('DEL', paused)
else
  redis.call('PEXPIRE', paused, ms)
end
return 1
