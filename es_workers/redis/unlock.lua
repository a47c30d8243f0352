-- unlock.lua: release a (subscriber, entity) lock only if it is still ours.
--
-- KEYS[1] lock  {tag}:lock:<subscriber>:<type>:<id>
-- ARGV[1] the holder's token
-- Returns 1 if released, 0 if the lock had expired or belongs to another worker.

if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
