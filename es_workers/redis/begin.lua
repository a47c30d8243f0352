-- begin.lua: a subscriber got a notice for entities of one partition; for each, decide in
-- layout KEYS: checkpoints parked heads retry_at failures (lock stream)* missed truncated paused resent started
-- layout ARGV: token lock_ms page (id target)*
-- layout items: i from 0
-- one step whether to handle it and, if so, take its lock and read its first events.
--
-- KEYS[1] checkpoints  {tag}:checkpoints:<subscriber>:<type>  hash entity ID -> event number
-- KEYS[2] parked       {tag}:parked:<subscriber>:<type>       hash entity ID -> JSON record
-- KEYS[3] heads        {tag}:heads:<type>                     hash entity ID -> position
-- KEYS[4] retry-at     {tag}:retry-at:<subscriber>:<type>     hash entity ID -> ms (server time)
-- KEYS[5] failures     {tag}:failures:<subscriber>:<type>     hash entity ID -> failed attempts
-- then per entity i (from 0): KEYS[6 + 2i] lock {tag}:lock:<subscriber>:<type>:<id> (string:
-- the holder's token), KEYS[7 + 2i] the entity stream {tag}:stream:<type>:<id>
-- then KEYS[#KEYS - 4] missed {tag}:missed:<subscriber>:<type> (string: how many events the
-- subscriber could not get, removed before it handled them), KEYS[#KEYS - 3] truncated
-- {tag}:truncated:<type> (hash entity ID -> "<first kept> <event 1's e>", truncate.lua),
-- KEYS[#KEYS - 2] paused {tag}:paused:<subscriber> (string, while a rebuild holds it),
-- KEYS[#KEYS - 1] resent {tag}:resent:<subscriber>:<type> (hash entity ID -> re-sends not
-- begun, see state.py: a delivery began, so forgotten here) and last, KEYS[#KEYS] started
-- {tag}:started:<subscriber> (count of the calls: the queue moves)
-- ARGV[1] lock token, ARGV[2] lock ms, ARGV[3] events to read at most per entity,
-- then per entity i: ARGV[4 + 2i] entity ID, ARGV[5 + 2i] the notice's event number
-- (-1: the entity's head)
--
-- Returns per entity {state, checkpoint, store_entity_id, entries, attempts, retry_in_ms}:
-- state 0 when the lock is now ours; entries are then the stream entries after the
-- checkpoint (at most ARGV[3], as XRANGE gives them), store_entity_id is event 1's 'e'
-- field when event 1 is not among them ('' otherwise), so no further read is needed, and
-- (when the events after the checkpoint were removed because they were before the first
-- kept one: a subscriber added after the scavenger ran) the checkpoint is the event before
-- the first stored one, where the subscriber starts: recorded at once (the lock is ours),
-- and the events it passes over are counted in `missed` (once: the next begin finds the
-- checkpoint moved);
-- attempts the failed attempts at the entity's next event so far;
-- state 1 when there is nothing to do (the entity is parked, or the notice is at or below
-- the checkpoint: a duplicate); state 2 when another worker holds the lock; state 3 when
-- the lock is now ours but the stream key holds another type (corrupt: the worker parks
-- the entity; an error here would fail the notice's other entities too); state 4 when the
-- entity's last attempt failed and its backoff has not passed: retry_in_ms is what is left
-- of it (the failing worker's retry notice, or else the due entry, starts it then); state 5
-- for every entity while the subscriber is paused (a rebuild: nothing begun, the notice
-- stays due).

local checkpoints, parked, heads, retry_at, failures = KEYS[1], KEYS[2], KEYS[3], KEYS[4],
  KEYS[5]
local token, lock_ms, page = ARGV[1], ARGV[2], tonumber(ARGV[3])
local now_ms

local function backoff_left(id)
  local at = redis.call('HGET', retry_at, id)
  if not at then return 0 end
  if not now_ms then
    local now = redis.call('TIME')
    now_ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
  end
  return math.max(0, tonumber(at) - now_ms)
end

local count = (#ARGV - 3) / 2
redis.call('INCR', KEYS[#KEYS])
for i = 0, count - 1 do redis.call('HDEL', KEYS[#KEYS - 1], ARGV[4 + 2 * i]) end

if redis.call('EXISTS', KEYS[#KEYS - 2]) == 1 then
  local paused = {}
  for i = 1, count do paused[i] = {5, 0, '', {}, 0, 0} end
  return paused
end

local truncated, missed = KEYS[#KEYS - 3], KEYS[#KEYS - 4]

-- The entity's truncation: its first kept event number (0: none) and event 1's ID.
local function truncation(id)
  local found = redis.call('HGET', truncated, id)
  if not found then return 0, '' end
  local kept, first_id = string.match(found, '^(%d+) ?([^ ]*)')
  return tonumber(kept), first_id
end

local function first_event_id(stream, id)
  local first = redis.call('XRANGE', stream, '1-0', '1-0')
  if #first == 0 then
    local _, first_id = truncation(id)
    return first_id
  end
  local fields = first[1][2]
  for i = 1, #fields, 2 do
    if fields[i] == 'e' then return fields[i + 1] end
  end
  return ''
end

local function begin(id, target, lock, stream)
  if redis.call('HEXISTS', parked, id) == 1 then
    return {1, 0, '', {}, 0, 0}
  end
  local checkpoint = tonumber(redis.call('HGET', checkpoints, id) or '0')
  if target < 0 then
    target = tonumber(redis.call('HGET', heads, id) or '0')
  end
  if checkpoint >= target then
    return {1, checkpoint, '', {}, 0, 0}
  end
  local left = backoff_left(id)
  if left > 0 then
    return {4, checkpoint, '', {}, 0, left}
  end
  if not redis.call('SET', lock, token, 'NX', 'PX', lock_ms) then
    return {2, checkpoint, '', {}, 0, 0}
  end
  local attempts = tonumber(redis.call('HGET', failures, id) or '0')
  local entries = redis.pcall('XRANGE', stream, (checkpoint + 1) .. '-0', '+', 'COUNT', page)
  if entries.err then
    return {3, checkpoint, '', {}, attempts, 0}
  end
  if #entries > 0 then
    local first = tonumber(string.match(entries[1][1], '^(%d+)'))
    if first and first > checkpoint + 1 and first <= truncation(id) then
      redis.call('INCRBY', missed, first - 1 - checkpoint)
      checkpoint = first - 1
      redis.call('HSET', checkpoints, id, checkpoint)
    end
  end
  local store_entity_id = ''
  if checkpoint > 0 then
    store_entity_id = first_event_id(stream, id)
  end
  return {0, checkpoint, store_entity_id, entries, attempts, 0}
end

local answers = {}
for i = 0, count - 1 do
  answers[i + 1] = begin(ARGV[4 + 2 * i], tonumber(ARGV[5 + 2 * i]), KEYS[6 + 2 * i],
    KEYS[7 + 2 * i])
end
return answers
