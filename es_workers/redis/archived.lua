-- archived.lua: records how far entities are archived (their events up to a number are in
-- the archive, committed there), never moving a mark back: two archivers that copied the
-- same events leave the greater mark. The scavenger removes events only up to the mark.
--
-- layout KEYS: archived
-- layout ARGV: (id number first_id)*
-- layout items: i from 0
--
-- KEYS[1] archived        {tag}:archived:<type>    hash entity ID -> "<archived up to> <event 1's e>"
-- ARGV    per entity: its ID, archived up to, event 1's store_event_id ('' when not known:
--         the mark's own is kept)
--
-- Returns how many marks moved.

local archived = KEYS[1]
local count = (#ARGV - 0) / 3
local moved = 0
for i = 0, count - 1 do
  local arg = 1 + 3 * i
  local id, number, first_id = ARGV[arg], tonumber(ARGV[arg + 1]), ARGV[arg + 2]
  local old = redis.call('HGET', archived, id)
  local done, old_first = 0, ''
  if old then
    local found, rest = string.match(old, '^(%d+) ?(.*)$')
    done, old_first = tonumber(found or '0'), rest or ''
  end
  if number > done then
    if first_id == '' then first_id = old_first end
    redis.call('HSET', archived, id, ARGV[arg + 1] .. ' ' .. first_id)
    moved = moved + 1
  end
end
return moved
