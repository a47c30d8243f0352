-- renew.lua: extend the (subscriber, entity) locks of one partition that a holder still
-- layout KEYS: (lock)*
-- layout ARGV: token lock_ms
-- layout items: i from 0
-- holds, while its handlers run (a lease is renewed, never taken over).
--
-- KEYS  the locks  {tag}:lock:<subscriber>:<type>:<id>
-- ARGV[1] the holder's token, ARGV[2] lock ms
-- Returns per lock 1 if it was renewed, 0 if it is no longer the holder's (it expired, or
-- another worker took it over): the holder must stop that entity without recording it.

local token, lock_ms = ARGV[1], ARGV[2]
local answers = {}
for i, lock in ipairs(KEYS) do
  if redis.call('GET', lock) == token then
    redis.call('PEXPIRE', lock, lock_ms)
    answers[i] = 1
  else
    answers[i] = 0
  end
end
return answers
