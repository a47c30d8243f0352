-- The data keys of personal fields (es_workers/redis/keyring.py): one script, three
-- operations, each atomic. Every key shares the hash tag {<prefix>:keys}.
-- layout KEYS: data subjects forgotten version
-- layout ARGV: op subject_or_key_id [key_id_or_old] [wrapped_or_new]
-- layout items: i from 0
-- KEYS: 1 data (hash key ID -> wrapped key), 2 subjects (hash subject -> key ID),
--       3 forgotten (hash subject -> keys destroyed), 4 version (a counter)
-- ARGV: operation, then
--   "create" subject key_id wrapped -> {key ID, wrapped} (the subject's, made if missing)
--   "forget" subject              -> keys of the subject destroyed so far
--   "rewrap" key_id old new       -> 1 if replaced, 0 if the key changed or is gone
local data, subjects, forgotten, version = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local op = ARGV[1]
if op == "create" then
  local known = redis.call("HGET", subjects, ARGV[2])
  if known then
    local wrapped = redis.call("HGET", data, known)
    if wrapped then
      return {known, wrapped}
    end
  end
  redis.call("HSET", data, ARGV[3], ARGV[4])
  redis.call("HSET", subjects, ARGV[2], ARGV[3])
  return {ARGV[3], ARGV[4]}
elseif op == "forget" then
  local known = redis.call("HGET", subjects, ARGV[2])
  if known then
    -- the key first: nothing can decrypt once this script returns
    redis.call("HDEL", data, known)
    redis.call("HDEL", subjects, ARGV[2])
    redis.call("HINCRBY", forgotten, ARGV[2], 1)
    redis.call("INCR", version)
  end
  return tonumber(redis.call("HGET", forgotten, ARGV[2]) or "0")
elseif op == "rewrap" then
  if redis.call("HGET", data, ARGV[2]) == ARGV[3] then
    redis.call("HSET", data, ARGV[2], ARGV[4])
    return 1
  end
  return 0
end
return redis.error_reply("keyring.lua: unknown operation " .. tostring(op))
