-- recorded_log_archived.lua: after the archiver committed to the archive every event an
-- eventsourcing application's log numbers up to `upto` (es_workers.eventsourcing's
-- recorders), moves the log's mark (never back) and removes the log's entries up to it, in
-- one step: a reader that finds the mark finds the notifications up to it in the archive,
-- and those after it in the log.
--
-- layout KEYS: log mark
-- layout ARGV: upto
-- layout items: i from 0
--
-- KEYS[1] log    <prefix>:es:{<app>}:notifications          stream, entry "<notification ID>-0"
-- KEYS[2] mark   <prefix>:es:{<app>}:archive:log            the notification ID archived up to
-- ARGV[1] upto   the notification ID up to which the archive holds the log's events
--
-- The log's newest entry is never removed: record.lua numbers the next notification after it.
-- Returns the mark.

local log, mark = KEYS[1], KEYS[2]
local upto = tonumber(ARGV[1])
local old = tonumber(redis.call('GET', mark) or '0')
if upto > old then redis.call('SET', mark, upto) else upto = old end
local last = redis.call('XREVRANGE', log, '+', '-', 'COUNT', 1)
if #last > 0 then
  local newest = tonumber(string.match(last[1][1], '^(%d+)'))
  local trim = upto
  if trim >= newest then trim = newest - 1 end
  if trim >= 1 then redis.call('XTRIM', log, 'MINID', (trim + 1) .. '-0') end
end
return upto
