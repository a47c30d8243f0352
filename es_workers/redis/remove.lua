-- remove.lua: deletes an entity (store.delete) or tombstones it (store.tombstone). Its
-- truncation moves past its head with a mark: ' deleted' (reads from before it see no
-- events, the next write goes on after its head: append.lua then lists it again) or
-- ' tombstone' (append.lua refuses every write, reads raise StreamDeletedError). It leaves
-- the entity index (entity_ids) and its snapshots are deleted. Its stored events stay
-- until every subscriber has handled them (the scavenger removes them); its head stays, as
-- the stream's last ID does. Deleting an entity with no events, or a tombstoned one, does
-- nothing.
--
-- layout KEYS: stream heads index truncated snapshots
-- layout ARGV: id mark
-- layout items: i from 0
--
-- KEYS[1] entity stream   {tag}:stream:<type>:<id>
-- KEYS[2] heads           {tag}:heads:<type>          hash entity ID -> position
-- KEYS[3] entity index    {tag}:index:<type>          zset "<store_entity_id><entity ID>"
-- KEYS[4] truncated       {tag}:truncated:<type>      hash entity ID -> "<first kept> <e>[ mark]"
-- KEYS[5] snapshots       {tag}:snapshot:<type>:<id>
-- ARGV[1] entity ID, ARGV[2] 'tombstone' or 'deleted'
--
-- Returns {0, head} when recorded, {1, head} when nothing was to do (already tombstoned;
-- deleting an entity with no events).

local stream, heads, index, truncated, snapshots = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local id, mark = ARGV[1], ARGV[2]
local head = tonumber(redis.call('HGET', heads, id) or '0')
local old = redis.call('HGET', truncated, id)
local first_id = ''
if old then
  if string.sub(old, -10) == ' tombstone' then return {1, head} end
  first_id = string.match(old, '^%d+ ?([^ ]*)') or ''
end
if mark == 'deleted' and head == 0 then return {1, head} end
if first_id == '' then
  local first = redis.call('XRANGE', stream, '1-0', '1-0')
  if #first > 0 then
    local fields = first[1][2]
    for i = 1, #fields, 2 do
      if fields[i] == 'e' then first_id = fields[i + 1] end
    end
  end
end
redis.call('HSET', truncated, id, (head + 1) .. ' ' .. first_id .. ' ' .. mark)
if first_id ~= '' then redis.call('ZREM', index, first_id .. id) end
redis.call('DEL', snapshots)
return {0, head}
