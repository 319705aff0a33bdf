-- Pages through the commit log, in id order.
--
-- KEYS[1]  rec (hash: id -> record)
-- KEYS[2]  log (sorted set of ids, all at score 0)
-- ARGV[1]  where to start: a ZRANGEBYLEX bound ('-', or '(' followed by the last id seen)
-- ARGV[2]  the most ids to return
--
-- Returns {id, record, ...}; a record is nil (false) if the log lists an id without one.
local ids = redis.call('ZRANGEBYLEX', KEYS[2], ARGV[1], '+', 'LIMIT', 0, ARGV[2])
if #ids == 0 then return {} end
local recs = redis.call('HMGET', KEYS[1], unpack(ids))
local out = {}
for i, id in ipairs(ids) do
  out[2 * i - 1] = id
  out[2 * i] = recs[i]
end
return out
