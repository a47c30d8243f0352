-- unlock.lua: release (subscriber, entity) locks of one partition, each only if still ours.
-- layout KEYS: (lock)*
-- layout ARGV: token
-- layout items: i from 0
--
-- KEYS  the locks  {tag}:lock:<subscriber>:<type>:<id>
-- ARGV[1] the holder's token
-- Returns how many were released (a lock that expired or belongs to another worker is not).

local token = ARGV[1]
local released = 0
for _, lock in ipairs(KEYS) do
  if redis.call('GET', lock) == token then
    released = released + redis.call('DEL', lock)
  end
end
return released
