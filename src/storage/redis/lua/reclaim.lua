-- Takes the pending markers of commits that can no longer finish.
--
-- Markers older than ARGV[1] ms (by the server's clock) whose commit has no record are taken:
-- their score becomes -1, so that the commit script refuses to create the record. Those whose
-- commit has a record are dropped.
--
-- KEYS[1]  rec (hash: id -> record)
-- KEYS[2]  pending (sorted set: id -> start time in ms, negative once taken)
-- KEYS[3]  pendkeys (hash: id -> version keys)
-- ARGV[1]  the age in ms a marker must have to be taken
-- ARGV[2]  the most markers to take and to return
--
-- Returns {id, version keys, ...} for every taken marker (this call's and earlier ones'
-- not yet forgotten), at most ARGV[2] of them; the keys are '' if the list is missing.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local old = redis.call('ZRANGEBYSCORE', KEYS[2], 0, now - tonumber(ARGV[1]), 'LIMIT', 0, ARGV[2])
for _, id in ipairs(old) do
  if redis.call('HEXISTS', KEYS[1], id) == 1 then
    redis.call('ZREM', KEYS[2], id)
    redis.call('HDEL', KEYS[3], id)
  else
    redis.call('ZADD', KEYS[2], -1, id)
  end
end
local taken = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', '(0', 'LIMIT', 0, ARGV[2])
local out = {}
for _, id in ipairs(taken) do
  out[#out + 1] = id
  out[#out + 1] = redis.call('HGET', KEYS[3], id) or ''
end
return out
