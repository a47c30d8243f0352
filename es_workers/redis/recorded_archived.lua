-- recorded_archived.lua: after the archiver committed aggregates' stored events to the
-- archive (es_workers.eventsourcing's recorders), moves their marks (never back) and removes
-- the archived events from their streams, in one step: a reader that finds an aggregate's
-- mark finds the events up to it in the archive, and those after it in Redis.
--
-- layout KEYS: marks (stream)*
-- layout ARGV: (originator version)*
-- layout items: i from 1
--
-- KEYS[1] marks      <prefix>:es:{<app>}:archive:marks:<purpose>  hash originator ID ->
--                                                                  version archived up to
-- KEYS[1 + i]        aggregate i's stream <prefix>:es:{<app>}:<purpose>:<originator>
-- ARGV per aggregate: its originator ID, the version up to which the archive holds its events
--
-- The newest event of an aggregate is never removed: record.lua reads it (XREVRANGE COUNT 1)
-- to refuse a version at or below it. Returns how many marks moved.

local marks = KEYS[1]
local moved = 0
for i = 1, #KEYS - 1 do
  local stream, originator, version = KEYS[1 + i], ARGV[2 * i - 1], tonumber(ARGV[2 * i])
  local old = tonumber(redis.call('HGET', marks, originator) or '-1')
  if version > old then
    redis.call('HSET', marks, originator, version)
    moved = moved + 1
  else
    version = old
  end
  local last = redis.call('XREVRANGE', stream, '+', '-', 'COUNT', 1)
  if #last > 0 then
    local newest = tonumber(string.match(last[1][1], '^(%d+)'))
    if version >= newest then version = newest - 1 end
    if version >= 0 then redis.call('XTRIM', stream, 'MINID', (version + 1) .. '-0') end
  end
end
return moved
