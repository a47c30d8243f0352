-- checkpoint.lua: a subscriber has handled an entity's event; record it while holding the lock.
--
-- KEYS[1] checkpoints  {tag}:checkpoints:<subscriber>:<type>  hash entity ID -> event number
-- KEYS[2] lock         {tag}:lock:<subscriber>:<type>:<id>    string: the holder's token
-- KEYS[3] heads        {tag}:heads:<type>                     hash entity ID -> position
-- KEYS[4] due          {tag}:due:<subscriber>                 zset "<type>:<id>" -> re-send time
-- KEYS[5] failures     {tag}:failures:<subscriber>:<type>     hash entity ID -> failed attempts
-- ARGV[1] entity ID, ARGV[2] event number handled, ARGV[3] lock token, ARGV[4] lock ms,
-- ARGV[5] due member "<type>:<id>", ARGV[6] "1": release the lock if caught up with the head,
-- ARGV[7] the entity's handled channel: told the new checkpoint (Store.wait_for listens)
--
-- Returns {head, released}: the entity's head (last event number) and 1 if the lock was
-- released, or {-1, 0} if the lock is no longer ours (it expired and another worker took
-- the entity over): the caller must stop at once. The checkpoint never moves back.

if redis.call('GET', KEYS[2]) ~= ARGV[3] then
  return {-1, 0}
end
local number = tonumber(ARGV[2])
local current = tonumber(redis.call('HGET', KEYS[1], ARGV[1]) or '0')
if number > current then
  redis.call('HSET', KEYS[1], ARGV[1], number)
  redis.call('PUBLISH', ARGV[7], number)
else
  number = current
end
redis.call('HDEL', KEYS[5], ARGV[1])
local head = tonumber(redis.call('HGET', KEYS[3], ARGV[1]) or '0')
if number >= head then
  redis.call('ZREM', KEYS[4], ARGV[5])
  if ARGV[6] == '1' then
    redis.call('DEL', KEYS[2])
    return {head, 1}
  end
end
redis.call('PEXPIRE', KEYS[2], ARGV[4])
return {head, 0}
