-- append.lua: optimistic, atomic append of a batch of events to one entity stream.
-- layout KEYS: stream heads index outbox scratch truncated [log]
-- layout ARGV: entity_type entity_id expected count (name data time store_event_id metadata)* [wake]
-- layout items: i from 0
--
-- KEYS[1] entity stream   {tag}:stream:<type>:<id>   stream IDs are "<event number>-0";
--                                                     fields n, d, t, e and (optional) m
-- KEYS[2] heads           {tag}:heads:<type>         hash entity ID -> position
-- KEYS[3] entity index    {tag}:index:<type>         zset (score 0) "<store_entity_id><entity ID>"
-- KEYS[4] outbox          {tag}:outbox               stream, one entry per appended batch
-- KEYS[5] scratch         {tag}:scratch              never left behind: see "A new stream"
-- KEYS[6] truncated       {tag}:truncated:<type>     hash entity ID -> "<first kept> <event 1's
--                                                     e>[ tombstone| deleted]" (truncate.lua,
--                                                     remove.lua): a tombstone refuses; the
--                                                     first write after a delete lists the
--                                                     entity again (its store_entity_id)
-- KEYS[7] log (optional)  {tag}:log                  stream, one entry per write in commit
--                                                     order: its events take the log numbers
--                                                     after the last one's, and its ID is
--                                                     "<its last log number>-0"; fields type,
--                                                     id, n (first event number), c (count):
--                                                     a pointer to the entity stream's entries,
--                                                     each of which holds its log number p
-- ARGV[1] entity type, ARGV[2] entity ID, ARGV[3] expected position, ARGV[4] event count,
-- then per event: name, JSON data, event time (microseconds), store_event_id, metadata
-- (JSON; '' for none: then no field is stored, so root events cost nothing extra);
-- then, optionally (a Redis Cluster), the partition's wake-up channel {tag}:wake.
--
-- Returns {0, new position, first log number} when appended, {1, position, first log
-- number} when the same events (same store_event_ids) were already appended there (a
-- retried write), {2, actual position} on a conflict; nothing appended: {3, N} when the
-- stream holds an entry numbered N at or past the first event although its position is
-- before it (an entry not written by this script), {4, position} when the key holds
-- another type than a stream, {5, position} when the log key holds another type, {6, 0}
-- when the entity was tombstoned. The
-- first log number is 0 without a log (or for events stored before it).
-- A Lua error does not undo earlier writes, so every check comes first; the first XADD
-- is what finds a stream out of sequence, so its failure is checked before any write.
-- Given a wake-up channel, an append to an empty outbox (its publishers idle) SPUBLISHes
-- there: cluster publishers cannot block on every outbox at once, so they wait for it.

local stream, heads, index, outbox, scratch, truncated, log = KEYS[1], KEYS[2], KEYS[3],
  KEYS[4], KEYS[5], KEYS[6], KEYS[7]
local entity_type, entity_id = ARGV[1], ARGV[2]
local expected = tonumber(ARGV[3])
local count = tonumber(ARGV[4])

local function key_type()
  return redis.call('TYPE', stream)['ok']
end

-- The event number of the stream's last generated ID (0 for no stream).
local function last_generated()
  if key_type() ~= 'stream' then return 0 end
  local info = redis.call('XINFO', 'STREAM', stream)
  for i = 1, #info, 2 do
    if info[i] == 'last-generated-id' then
      return tonumber(string.match(info[i + 1], '^(%d+)'))
    end
  end
  return 0
end

local removed = redis.call('HGET', truncated, entity_id)
if removed and string.sub(removed, -10) == ' tombstone' then return {6, 0} end
-- Deleted (remove.lua): the first event after the deleted ones lists the entity again.
local relisted
if removed and string.sub(removed, -8) == ' deleted' then
  local kept, first_id = string.match(removed, '^(%d+) ([^ ]*)')
  if tonumber(kept) == expected + 1 and first_id ~= '' then relisted = first_id end
end

-- The position is the entity's entry in heads: this script alone writes it, with the
-- events, so it equals the stream's last generated ID, survives trimming as that does, and
-- costs one HGET (XINFO STREAM made every append ~40% slower on the server). Should the
-- entry be lost, the stream's last generated ID is the position.
local position
local head = redis.call('HGET', heads, entity_id)
if head then
  position = tonumber(head)
else
  local found = key_type()
  if found ~= 'stream' and found ~= 'none' then return {4, 0} end
  position = last_generated()
end

-- The store_event_id and log number (0 if none) of the entity's event `number`.
local function event_id_at(number)
  local entries = redis.pcall('XRANGE', stream, number .. '-0', number .. '-0')
  if entries.err or #entries == 0 then return nil, 0 end
  local fields, id, logged = entries[1][2], nil, 0
  for i = 1, #fields, 2 do
    if fields[i] == 'e' then id = fields[i + 1] end
    if fields[i] == 'p' then logged = tonumber(fields[i + 1]) end
  end
  return id, logged
end

if position ~= expected then
  if position >= expected + count and expected >= 0 then
    local first_id, first_logged = event_id_at(expected + 1)
    if first_id == ARGV[8] and event_id_at(expected + count) == ARGV[3 + 5 * count] then
      return {1, expected + count, first_logged}
    end
  end
  return {2, position}
end

-- The log's last number: its last entry's ID, or (trimmed empty, which the trimmer avoids)
-- its last generated ID, which trimming keeps: numbers are never reused.
local log_last = 0
if log then
  local last = redis.pcall('XREVRANGE', log, '+', '-', 'COUNT', 1)
  if last.err then return {5, position} end
  if #last > 0 then
    log_last = tonumber(string.match(last[1][1], '^(%d+)'))
  elseif redis.call('EXISTS', log) == 1 then
    local info = redis.call('XINFO', 'STREAM', log)
    for i = 1, #info, 2 do
      if info[i] == 'last-generated-id' then
        log_last = tonumber(string.match(info[i + 1], '^(%d+)'))
      end
    end
  end
end

local function add(i)
  local arg = 5 + 5 * i
  local id = (expected + i + 1) .. '-0'
  if not log then
    if ARGV[arg + 4] == '' then
      return redis.pcall('XADD', stream, id,
        'n', ARGV[arg], 'd', ARGV[arg + 1], 't', ARGV[arg + 2], 'e', ARGV[arg + 3])
    end
    return redis.pcall('XADD', stream, id,
      'n', ARGV[arg], 'd', ARGV[arg + 1], 't', ARGV[arg + 2], 'e', ARGV[arg + 3],
      'm', ARGV[arg + 4])
  end
  if ARGV[arg + 4] == '' then
    return redis.pcall('XADD', stream, id,
      'n', ARGV[arg], 'd', ARGV[arg + 1], 't', ARGV[arg + 2], 'e', ARGV[arg + 3],
      'p', log_last + i + 1)
  end
  return redis.pcall('XADD', stream, id,
    'n', ARGV[arg], 'd', ARGV[arg + 1], 't', ARGV[arg + 2], 'e', ARGV[arg + 3],
    'p', log_last + i + 1, 'm', ARGV[arg + 4])
end

-- Why the first XADD failed when the stream is at fault (nothing appended), else nil
-- (e.g. OOM: the caller raises that error as Redis gave it).
local function refused()
  local found = key_type()
  if found ~= 'stream' and found ~= 'none' then return {4, position} end
  local last = last_generated()
  if last > expected then return {3, last} end
  return nil
end

for i = 0, count - 1 do
  local added = add(i)
  if type(added) == 'table' and added.err then
    -- Once one XADD succeeded the later (greater) IDs cannot fail for the stream's sake.
    local why = i == 0 and refused()
    if why then return why end
    return added  -- any other error (OOM...) as Redis gave it
  end
end
-- A new stream: Redis gave its node stream-node-max-bytes (4096 by default) up front, most
-- of it unused while the entity has a few events: ~4.4 KB for one ~200-byte event. A copy
-- holds the node at its size (~0.6 KB); later appends grow it as they go, until it is full
-- and the next node is allocated whole, as before. So small entities cost what they hold
-- and long streams are as they were. COPY refuses an existing destination: then nothing
-- is moved.
if position == 0 and redis.call('COPY', stream, scratch) == 1 then
  redis.call('DEL', stream)
  redis.call('RENAME', scratch, stream)
end
local new_position = expected + count
-- The log: one entry for the write, whose events take consecutive numbers (scripts run
-- one at a time).
if log then
  redis.call('XADD', log, (log_last + count) .. '-0', 'type', entity_type, 'id', entity_id,
    'n', expected + 1, 'c', count)
end
redis.call('HSET', heads, entity_id, new_position)
if expected == 0 then
  redis.call('ZADD', index, 0, ARGV[8] .. entity_id)
elseif relisted then
  redis.call('ZADD', index, 0, relisted .. entity_id)
end
local wake = ARGV[5 + 5 * count]
local idle = wake and wake ~= '' and redis.call('XLEN', outbox) == 0
redis.call('XADD', outbox, '*', 'type', entity_type, 'id', entity_id,
  'first', expected + 1, 'last', new_position)
if idle then
  redis.call('SPUBLISH', wake, entity_id)
end
return {0, new_position, log and log_last + 1 or 0}
