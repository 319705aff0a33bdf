-- Reads the commit log after a position, in creation order.
--
-- KEYS[1]  rec (hash: id -> record)
-- KEYS[2]  tail (sorted set: id at its position)
-- KEYS[3]  seq (the position of the newest record)
-- ARGV[1]  the position to read after
-- ARGV[2]  the most records to return
--
-- Returns {head, id, position, record, ...}; a record is nil (false) if it was deleted.
local head = tonumber(redis.call('GET', KEYS[3]) or '0')
local found = redis.call('ZRANGEBYSCORE', KEYS[2], '(' .. ARGV[1], '+inf', 'WITHSCORES', 'LIMIT', 0, ARGV[2])
local out = {head}
if #found == 0 then return out end
local ids = {}
for i = 1, #found, 2 do ids[#ids + 1] = found[i] end
local recs = redis.call('HMGET', KEYS[1], unpack(ids))
for i, id in ipairs(ids) do
  out[#out + 1] = id
  out[#out + 1] = found[2 * i]
  out[#out + 1] = recs[i]
end
return out
