-- begin.lua: a subscriber got a notice for an entity; decide in one step whether to handle it.
--
-- KEYS[1] checkpoints  {tag}:checkpoints:<subscriber>:<type>  hash entity ID -> event number
-- KEYS[2] parked       {tag}:parked:<subscriber>:<type>       hash entity ID -> JSON record
-- KEYS[3] heads        {tag}:heads:<type>                     hash entity ID -> position
-- KEYS[4] lock         {tag}:lock:<subscriber>:<type>:<id>    string: the holder's token
-- ARGV[1] entity ID, ARGV[2] the notice's event number (-1: the entity's head),
-- ARGV[3] lock token, ARGV[4] lock ms
--
-- Returns {0, checkpoint} when the lock is now ours and events after the checkpoint wait;
-- {1, checkpoint} when there is nothing to do (the entity is parked, or the notice is at or
-- below the checkpoint: a duplicate); {2, checkpoint} when another worker holds the lock.

if redis.call('HEXISTS', KEYS[2], ARGV[1]) == 1 then
  return {1, 0}
end
local checkpoint = tonumber(redis.call('HGET', KEYS[1], ARGV[1]) or '0')
local target = tonumber(ARGV[2])
if target < 0 then
  target = tonumber(redis.call('HGET', KEYS[3], ARGV[1]) or '0')
end
if checkpoint >= target then
  return {1, checkpoint}
end
if not redis.call('SET', KEYS[4], ARGV[3], 'NX', 'PX', ARGV[4]) then
  return {2, checkpoint}
end
return {0, checkpoint}
