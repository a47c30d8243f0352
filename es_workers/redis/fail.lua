-- fail.lua: a handler failed on an entity's next event (or the event cannot be read); count
-- layout KEYS: failures retry_at parked due lock
-- layout ARGV: token id member channel max_attempts backoff_ms record
-- layout items: i from 0
-- the attempt, under the holder's lock, then either set when the next attempt may start or,
-- at the last attempt, park the entity.
--
-- KEYS[1] failures  {tag}:failures:<subscriber>:<type>  hash entity ID -> failed attempts
-- KEYS[2] retry-at  {tag}:retry-at:<subscriber>:<type>  hash entity ID -> ms (server time)
-- KEYS[3] parked    {tag}:parked:<subscriber>:<type>    hash entity ID -> JSON record
-- KEYS[4] due       {tag}:due:<subscriber>              zset "<type>:<id>" -> re-send time
-- KEYS[5] lock      {tag}:lock:<subscriber>:<type>:<id> (string: the holder's token)
-- ARGV[1] token, ARGV[2] entity ID, ARGV[3] due member "<type>:<id>", ARGV[4] the entity's
-- handled channel (told "parked"), ARGV[5] attempts before parking, ARGV[6] backoff ms
-- before the next attempt, ARGV[7] the parked record (JSON object; "attempts" is set here)
--
-- Returns {attempts, retry_in_ms}: the attempts so far and the wait before the next one
-- (the entity is started again no sooner: begin.lua checks retry-at; the due entry wakes
-- it), or retry_in_ms -1 when the entity is now parked; {-1, 0} when the lock is no longer
-- the caller's: nothing is recorded (the new holder counts its own attempts).

local failures, retry_at, parked, due, lock = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local token, id, member, channel = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local max_attempts, backoff_ms = tonumber(ARGV[5]), tonumber(ARGV[6])

if redis.call('GET', lock) ~= token then
  return {-1, 0}
end
local attempts = redis.call('HINCRBY', failures, id, 1)
if attempts >= max_attempts then
  local record = cjson.decode(ARGV[7])
  record['attempts'] = attempts
  redis.call('HSET', parked, id, cjson.encode(record))
  redis.call('HDEL', failures, id)
  redis.call('HDEL', retry_at, id)
  redis.call('ZREM', due, member)
  redis.call('PUBLISH', channel, 'parked')
  return {attempts, -1}
end
local now = redis.call('TIME')
local at = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000) + backoff_ms
redis.call('HSET', retry_at, id, at)
redis.call('ZADD', due, at, member)
return {attempts, backoff_ms}
