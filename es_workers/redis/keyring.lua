-- The data keys of personal fields (es_workers/redis/keyring.py): one script, three
-- operations, each atomic. Every key shares the hash tag {<prefix>:keys}.
-- KEYS: 1 data (hash key ID -> wrapped key), 2 subjects (hash subject -> key ID),
--       3 forgotten (hash subject -> keys destroyed), 4 version (a counter)
-- ARGV: operation, then
--   "create" subject key_id wrapped -> {key ID, wrapped} (the subject's, made if missing)
--   "forget" subject              -> keys of the subject destroyed so far
--   "rewrap" key_id old new       -> 1 if replaced, 0 if the key changed or is gone
local op = ARGV[1]
if op == "create" then
  local known = redis.call("HGET", KEYS[2], ARGV[2])
  if known then
    local wrapped = redis.call("HGET", KEYS[1], known)
    if wrapped then
      return {known, wrapped}
    end
  end
  redis.call("HSET", KEYS[1], ARGV[3], ARGV[4])
  redis.call("HSET", KEYS[2], ARGV[2], ARGV[3])
  return {ARGV[3], ARGV[4]}
elseif op == "forget" then
  local known = redis.call("HGET", KEYS[2], ARGV[2])
  if known then
    -- the key first: nothing can decrypt once this script returns
    redis.call("HDEL", KEYS[1], known)
    redis.call("HDEL", KEYS[2], ARGV[2])
    redis.call("HINCRBY", KEYS[3], ARGV[2], 1)
    redis.call("INCR", KEYS[4])
  end
  return tonumber(redis.call("HGET", KEYS[3], ARGV[2]) or "0")
elseif op == "rewrap" then
  if redis.call("HGET", KEYS[1], ARGV[2]) == ARGV[3] then
    redis.call("HSET", KEYS[1], ARGV[2], ARGV[4])
    return 1
  end
  return 0
end
return redis.error_reply("keyring.lua: unknown operation " .. tostring(op))
