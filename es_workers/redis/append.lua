-- append.lua: optimistic, atomic append of a batch of events to one entity stream.
--
-- KEYS[1] entity stream   {tag}:stream:<type>:<id>   stream IDs are "<event number>-0";
--                                                     fields n, d, t, e and (optional) m
-- KEYS[2] heads           {tag}:heads:<type>         hash entity ID -> position
-- KEYS[3] entity index    {tag}:index:<type>         zset (score 0) "<store_entity_id><entity ID>"
-- KEYS[4] outbox          {tag}:outbox               stream, one entry per appended batch
-- KEYS[5] scratch         {tag}:scratch              never left behind: see "A new stream"
-- ARGV[1] entity type, ARGV[2] entity ID, ARGV[3] expected position, ARGV[4] event count,
-- then per event: name, JSON data, event time (microseconds), store_event_id, metadata
-- (JSON; '' for none: then no field is stored, so root events cost nothing extra);
-- then, optionally (a Redis Cluster), the partition's wake-up channel {tag}:wake.
--
-- Returns {0, new position} when appended, {1, position} when the same events (same
-- store_event_ids) were already appended there (a retried write), {2, actual position}
-- on a conflict. A Lua error does not undo earlier writes, so every check comes first.
-- Given a wake-up channel, an append to an empty outbox (its publishers idle) SPUBLISHes
-- there: cluster publishers cannot block on every outbox at once, so they wait for it.

local stream, heads, index, outbox = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local expected = tonumber(ARGV[3])
local count = tonumber(ARGV[4])

-- The position is the entity's entry in heads: this script alone writes it, with the
-- events, so it equals the stream's last generated ID, survives trimming as that does, and
-- costs one HGET (XINFO STREAM made every append ~40% slower on the server). Should the
-- entry be lost, the stream's last generated ID is the position.
local position
local head = redis.call('HGET', heads, ARGV[2])
if head then
  position = tonumber(head)
else
  position = 0
  if redis.call('EXISTS', stream) == 1 then
    local info = redis.call('XINFO', 'STREAM', stream)
    for i = 1, #info, 2 do
      if info[i] == 'last-generated-id' then
        position = tonumber(string.match(info[i + 1], '^(%d+)'))
        break
      end
    end
  end
end

local function event_id_at(number)
  local entries = redis.call('XRANGE', stream, number .. '-0', number .. '-0')
  if #entries == 0 then return nil end
  local fields = entries[1][2]
  for i = 1, #fields, 2 do
    if fields[i] == 'e' then return fields[i + 1] end
  end
  return nil
end

if position ~= expected then
  if position >= expected + count and expected >= 0
      and event_id_at(expected + 1) == ARGV[8]
      and event_id_at(expected + count) == ARGV[3 + 5 * count] then
    return {1, expected + count}
  end
  return {2, position}
end

for i = 0, count - 1 do
  local arg = 5 + 5 * i
  local id = (expected + i + 1) .. '-0'
  if ARGV[arg + 4] == '' then
    redis.call('XADD', stream, id,
      'n', ARGV[arg], 'd', ARGV[arg + 1], 't', ARGV[arg + 2], 'e', ARGV[arg + 3])
  else
    redis.call('XADD', stream, id,
      'n', ARGV[arg], 'd', ARGV[arg + 1], 't', ARGV[arg + 2], 'e', ARGV[arg + 3],
      'm', ARGV[arg + 4])
  end
end
-- A new stream: Redis gave its node stream-node-max-bytes (4096 by default) up front, most
-- of it unused while the entity has a few events: ~4.4 KB for one ~200-byte event. A copy
-- holds the node at its size (~0.6 KB); later appends grow it as they go, until it is full
-- and the next node is allocated whole, as before. So small entities cost what they hold
-- and long streams are as they were. COPY refuses an existing destination: then nothing
-- is moved.
if position == 0 and redis.call('COPY', stream, KEYS[5]) == 1 then
  redis.call('DEL', stream)
  redis.call('RENAME', KEYS[5], stream)
end
local new_position = expected + count
redis.call('HSET', heads, ARGV[2], new_position)
if expected == 0 then
  redis.call('ZADD', index, 0, ARGV[8] .. ARGV[2])
end
local wake = ARGV[5 + 5 * count]
local idle = wake and wake ~= '' and redis.call('XLEN', outbox) == 0
redis.call('XADD', outbox, '*', 'type', ARGV[1], 'id', ARGV[2],
  'first', expected + 1, 'last', new_position)
if idle then
  redis.call('SPUBLISH', wake, ARGV[2])
end
return {0, new_position}
