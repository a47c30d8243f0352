-- record.lua: one atomic write of an eventsourcing recorder (es_workers.eventsourcing):
-- stored events, their notifications in the application's log, and a tracking record.
-- layout KEYS: log tracking (stream)*
-- layout ARGV: logged upstream tracked count write_token (version topic state originator uuid)*
-- layout items: i from 1
--
-- KEYS[1] log          <prefix>:es:{<app>}:notifications  stream, entry "<notification ID>-0"
--                                                         per event: fields o (originator ID),
--                                                         u ('1': a UUID), v (version), t (topic)
-- KEYS[2] tracking     <prefix>:es:{<app>}:tracking       hash upstream app -> notification ID
-- KEYS[3..] one per event, its originator's stream <prefix>:es:{<app>}:<purpose>:<originator>
--                                                         entry "<version>-1" (a version may be
--                                                         0 and Redis refuses the ID 0-0):
--                                                         fields t (topic), s (state),
--                                                         n (notification ID) when logged,
--                                                         w (write token) on a write's first
-- ARGV[1] '1': log the events (an application recorder), '0': not (snapshots, aggregates)
-- ARGV[2] tracking's upstream application name ('' for none), ARGV[3] its notification ID
-- ARGV[4] event count, ARGV[5] the write's token (random: the same when a write is sent
-- again), then per event: version, topic, state, originator ID, UUID flag.
--
-- Returns {0, first notification ID or 0}; nothing written: {1, current} when the tracking
-- record's notification ID is not above the recorded one, {2, i} when event i's version is
-- not above its originator's last version (recorded, or earlier in this write), {3, first
-- notification ID or 0} when this write was recorded before (the same token): a write
-- redis-py sent again after its reply was lost.
-- A Lua error does not undo earlier writes, so every check comes first.

local log, tracking = KEYS[1], KEYS[2]
local logged = ARGV[1] == '1'
local upstream, tracked = ARGV[2], tonumber(ARGV[3])
local count = tonumber(ARGV[4])
local write_token = ARGV[5]

-- A write sent again (redis-py retries a command whose connection failed): its first event
-- is recorded with its write token. Returns that event's notification ID (0 if none).
local function written_before()
  if count == 0 then return nil end
  local found = redis.call('XRANGE', KEYS[3], ARGV[6] .. '-1', ARGV[6] .. '-1')
  if #found == 0 then return nil end
  local fields, token, number = found[1][2], nil, 0
  for j = 1, #fields, 2 do
    if fields[j] == 'w' then token = fields[j + 1] end
    if fields[j] == 'n' then number = tonumber(fields[j + 1]) end
  end
  if token == write_token then return number end
  return nil
end

local again = written_before()
if again then return {3, again} end

if upstream ~= '' then
  local current = redis.call('HGET', tracking, upstream)
  if current and tonumber(current) >= tracked then return {1, tonumber(current)} end
end

-- The last entry's number of a stream (its ID's first part), or `none` when it is empty.
local function last_number(key, none)
  local last = redis.call('XREVRANGE', key, '+', '-', 'COUNT', 1)
  if #last == 0 then return none end
  return tonumber(string.match(last[1][1], '^(%d+)'))
end

local last_version = {}
for i = 1, count do
  local stream, version = KEYS[2 + i], tonumber(ARGV[1 + 5 * i])
  if last_version[stream] == nil then last_version[stream] = last_number(stream, -1) end
  if version <= last_version[stream] then return {2, i} end
  last_version[stream] = version
end

-- Scripts run one at a time: the numbers after the log's last one are this write's alone.
local first = logged and count > 0 and last_number(log, 0) + 1 or 0
for i = 1, count do
  local at = 1 + 5 * i
  local id = ARGV[at] .. '-1'
  if logged then
    local number = first + i - 1
    if i == 1 then
      redis.call('XADD', KEYS[3], id, 't', ARGV[at + 1], 's', ARGV[at + 2], 'n', number,
        'w', write_token)
    else
      redis.call('XADD', KEYS[2 + i], id, 't', ARGV[at + 1], 's', ARGV[at + 2], 'n', number)
    end
    redis.call('XADD', log, number .. '-0', 'o', ARGV[at + 3], 'u', ARGV[at + 4],
      'v', ARGV[at], 't', ARGV[at + 1])
  elseif i == 1 then
    redis.call('XADD', KEYS[3], id, 't', ARGV[at + 1], 's', ARGV[at + 2], 'w', write_token)
  else
    redis.call('XADD', KEYS[2 + i], id, 't', ARGV[at + 1], 's', ARGV[at + 2])
  end
end
if upstream ~= '' then redis.call('HSET', tracking, upstream, tracked) end
return {0, first}
