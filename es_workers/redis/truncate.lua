-- truncate.lua: records that an entity's events before a number are no longer kept: reads
-- layout KEYS: stream heads truncated
-- layout ARGV: id kept
-- layout items: i from 0
-- from before it raise TruncatedError at once, the scavenger removes them later (never
-- before every subscriber handled them). The stream is not touched: numbering and the
-- optimistic check go on from the head as before.
--
-- KEYS[1] entity stream   {tag}:stream:<type>:<id>
-- KEYS[2] heads           {tag}:heads:<type>       hash entity ID -> position
-- KEYS[3] truncated       {tag}:truncated:<type>   hash entity ID -> "<first kept> <event 1's e>"
-- ARGV[1] entity ID, ARGV[2] first kept event number
--
-- Returns {0, first kept} (never moved back: the greater of the old and the new), or
-- {1, head} when the number is beyond the head + 1 (nothing written).

local stream, heads, truncated = KEYS[1], KEYS[2], KEYS[3]
local id, kept = ARGV[1], tonumber(ARGV[2])
local head = tonumber(redis.call('HGET', heads, id) or '0')
if kept > head + 1 then return {1, head} end

local old = redis.call('HGET', truncated, id)
local old_kept, first_id = 1, ''
if old then
  local number, rest = string.match(old, '^(%d+) ?([^ ]*)')
  old_kept, first_id = tonumber(number), rest
end
if kept <= old_kept then return {0, old_kept} end

-- Event 1's store_event_id is the entity's store_entity_id: kept here before the
-- scavenger removes event 1.
if first_id == '' then
  local first = redis.call('XRANGE', stream, '1-0', '1-0')
  if #first > 0 then
    local fields = first[1][2]
    for i = 1, #fields, 2 do
      if fields[i] == 'e' then first_id = fields[i + 1] end
    end
  end
end
redis.call('HSET', truncated, id, kept .. ' ' .. first_id)
return {0, kept}
