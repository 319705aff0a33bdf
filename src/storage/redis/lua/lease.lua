-- Writes (or removes) a copy of a node's lease in a shard other than the one that holds
-- leases, so that commits decided there check it (see heartbeat.lua, which decides).
--
-- KEYS[1]  nodes (hash: node id -> 'expiry-ms watermark oldest-clock-ms address')
-- ARGV[1]  the node's id (hex)
-- ARGV[2]  the lease as heartbeat.lua stored it, or '' to remove the copy
--
-- Copies that expired more than a minute ago (by this server's clock) are removed.
-- Returns 1.
if ARGV[2] == '' then
  redis.call('HDEL', KEYS[1], ARGV[1])
else
  redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local all = redis.call('HGETALL', KEYS[1])
for i = 1, #all, 2 do
  if tonumber(string.match(all[i + 1], '^%d+')) < now - 60000 then
    redis.call('HDEL', KEYS[1], all[i])
  end
end
return 1
