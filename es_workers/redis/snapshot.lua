-- snapshot.lua: saves an entity's snapshot beside its stream, if the event it follows is
-- stored; never touches the stream, the outbox or the log (subscribers never see one).
--
-- KEYS[1] entity stream   {tag}:stream:<type>:<id>
-- KEYS[2] heads           {tag}:heads:<type>        hash entity ID -> position
-- KEYS[3] snapshots       {tag}:snapshot:<type>:<id> hash state name ->
--                                                    "<version> <event number> <event time µs> <JSON>"
-- KEYS[4] truncated       {tag}:truncated:<type>    hash entity ID -> "<first kept> ..."
-- ARGV[1] entity ID, ARGV[2] state name, ARGV[3] version, ARGV[4] event number, ARGV[5] JSON
--
-- Returns {0, event number kept} when saved or when a snapshot of the same version after a
-- later (or the same) event is already there (kept: the newest wins); {1, head} when the
-- event number is beyond the entity's head; {2, head} when the event is no longer stored
-- or kept (a snapshot before the first kept event would never be used); {3, head} when
-- the entity was tombstoned.
-- Nothing is written before every check.

local number = tonumber(ARGV[4])
local head = tonumber(redis.call('HGET', KEYS[2], ARGV[1]) or '0')
local truncated = redis.call('HGET', KEYS[4], ARGV[1])
if truncated and string.sub(truncated, -10) == ' tombstone' then return {3, head} end
if number > head then return {1, head} end
if truncated and number + 1 < tonumber(string.match(truncated, '^(%d+)')) then
  return {2, head}
end

local entries = redis.pcall('XRANGE', KEYS[1], number .. '-0', number .. '-0')
if entries.err or #entries == 0 then return {2, head} end
local time
local fields = entries[1][2]
for i = 1, #fields, 2 do
  if fields[i] == 't' then time = fields[i + 1] end
end
if not time then return {2, head} end

local old = redis.call('HGET', KEYS[3], ARGV[2])
if old then
  local version, kept = string.match(old, '^(%d+) (%d+) ')
  if version == ARGV[3] and tonumber(kept) >= number then return {0, tonumber(kept)} end
end
redis.call('HSET', KEYS[3], ARGV[2], ARGV[3] .. ' ' .. number .. ' ' .. time .. ' ' .. ARGV[5])
return {0, number}
