-- archived.lua: records how far entities are archived (their events up to a number are in
-- the archive, committed there), never moving a mark back: two archivers that copied the
-- same events leave the greater mark. The scavenger removes events only up to the mark.
--
-- KEYS[1] archived        {tag}:archived:<type>    hash entity ID -> "<archived up to> <event 1's e>"
-- ARGV    triples: entity ID, archived up to, event 1's store_event_id ('' when not known:
--         the mark's own is kept)
--
-- Returns how many marks moved.

local moved = 0
for i = 1, #ARGV, 3 do
  local id, number, first_id = ARGV[i], tonumber(ARGV[i + 1]), ARGV[i + 2]
  local old = redis.call('HGET', KEYS[1], id)
  local done, old_first = 0, ''
  if old then
    local found, rest = string.match(old, '^(%d+) ?(.*)$')
    done, old_first = tonumber(found or '0'), rest or ''
  end
  if number > done then
    if first_id == '' then first_id = old_first end
    redis.call('HSET', KEYS[1], id, ARGV[i + 1] .. ' ' .. first_id)
    moved = moved + 1
  end
end
return moved
