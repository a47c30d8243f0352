-- checkpoint.lua: a subscriber has handled events of entities of one partition; record them
-- layout KEYS: checkpoints heads due failures retry_at (lock)*
-- layout ARGV: token lock_ms (id number member channel release)*
-- layout items: i from 0
-- for each entity whose lock it still holds.
--
-- KEYS[1] checkpoints  {tag}:checkpoints:<subscriber>:<type>  hash entity ID -> event number
-- KEYS[2] heads        {tag}:heads:<type>                     hash entity ID -> position
-- KEYS[3] due          {tag}:due:<subscriber>                 zset "<type>:<id>" -> re-send time
-- KEYS[4] failures     {tag}:failures:<subscriber>:<type>     hash entity ID -> failed attempts
-- KEYS[5] retry-at     {tag}:retry-at:<subscriber>:<type>     hash entity ID -> ms (server time)
-- then per entity i (from 0): KEYS[6 + i] lock {tag}:lock:<subscriber>:<type>:<id>
-- ARGV[1] lock token, ARGV[2] lock ms, then per entity i: ARGV[3 + 5i] entity ID,
-- ARGV[4 + 5i] event number handled, ARGV[5 + 5i] due member "<type>:<id>", ARGV[6 + 5i]
-- the entity's handled channel (told the new checkpoint: Store.wait_for listens),
-- ARGV[7 + 5i] "1": release the lock if the entity is caught up with its head
--
-- Returns per entity {head, released}: the entity's head (last event number) and 1 if the
-- lock was released, or {-1, 0} if the lock is no longer ours (it expired and another
-- worker took the entity over): nothing is recorded, and the caller must stop that entity
-- at once. The checkpoint never moves back; a handled event clears the failures (and the
-- backoff) of the entity's next one.

local checkpoints, heads, due, failures, retry_at = KEYS[1], KEYS[2], KEYS[3], KEYS[4],
  KEYS[5]
local token, lock_ms = ARGV[1], ARGV[2]

local function commit(lock, id, number, member, channel, release)
  if redis.call('GET', lock) ~= token then
    return {-1, 0}
  end
  local current = tonumber(redis.call('HGET', checkpoints, id) or '0')
  if number > current then
    redis.call('HSET', checkpoints, id, number)
    redis.call('PUBLISH', channel, number)
  else
    number = current
  end
  redis.call('HDEL', failures, id)
  redis.call('HDEL', retry_at, id)
  local head = tonumber(redis.call('HGET', heads, id) or '0')
  if number >= head then
    redis.call('ZREM', due, member)
    if release then
      redis.call('DEL', lock)
      return {head, 1}
    end
  end
  redis.call('PEXPIRE', lock, lock_ms)
  return {head, 0}
end

local answers = {}
for i = 0, #KEYS - 6 do
  local arg = 3 + 5 * i
  answers[i + 1] = commit(KEYS[6 + i], ARGV[arg], tonumber(ARGV[arg + 1]), ARGV[arg + 2],
    ARGV[arg + 3], ARGV[arg + 4] == '1')
end
return answers
