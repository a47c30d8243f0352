-- snapshot.lua: saves an entity's snapshot beside its stream, if the event it follows is
-- layout KEYS: stream heads snapshots truncated
-- layout ARGV: id name version number data
-- layout items: i from 0
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

local stream, heads, snapshots, truncated = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local id, name, version, number, data = ARGV[1], ARGV[2], ARGV[3], tonumber(ARGV[4]), ARGV[5]
local head = tonumber(redis.call('HGET', heads, id) or '0')
local truncation = redis.call('HGET', truncated, id)
if truncation and string.sub(truncation, -10) == ' tombstone' then return {3, head} end
if number > head then return {1, head} end
if truncation and number + 1 < tonumber(string.match(truncation, '^(%d+)')) then
  return {2, head}
end

local entries = redis.pcall('XRANGE', stream, number .. '-0', number .. '-0')
if entries.err or #entries == 0 then return {2, head} end
local time
local fields = entries[1][2]
for i = 1, #fields, 2 do
  if fields[i] == 't' then time = fields[i + 1] end
end
if not time then return {2, head} end

local old = redis.call('HGET', snapshots, name)
if old then
  local old_version, kept = string.match(old, '^(%d+) (%d+) ')
  if old_version == version and tonumber(kept) >= number then return {0, tonumber(kept)} end
end
redis.call('HSET', snapshots, name, version .. ' ' .. number .. ' ' .. time .. ' ' .. data)
return {0, number}
