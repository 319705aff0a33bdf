-- Creates, renews or gives up a node's lease, and lists the live nodes.
--
-- KEYS[1]  nodes (hash: node id -> 'expiry-ms watermark oldest-clock-ms address')
-- ARGV[1]  the node's id (hex)
-- ARGV[2]  the lease in ms
-- ARGV[3]  the node's watermark and oldest clock: 'position ms'
-- ARGV[4]  the node's address
-- ARGV[5]  'join', 'renew' or 'leave'
--
-- Returns {0}: a renewal of a lease that already expired (nothing written: the node must
-- rejoin); else {1, now-ms, id, lease, ...} for every live node. Leases that expired more
-- than a minute ago are removed.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local node = ARGV[1]
if ARGV[5] == 'leave' then
  redis.call('HDEL', KEYS[1], node)
else
  if ARGV[5] == 'renew' then
    local lease = redis.call('HGET', KEYS[1], node)
    if (not lease) or tonumber(string.match(lease, '^%d+')) < now then return {0} end
  end
  local expiry = now + tonumber(ARGV[2])
  redis.call('HSET', KEYS[1], node, expiry .. ' ' .. ARGV[3] .. ' ' .. ARGV[4])
end
local all = redis.call('HGETALL', KEYS[1])
local out = {1, now}
for i = 1, #all, 2 do
  local expiry = tonumber(string.match(all[i + 1], '^%d+'))
  if expiry >= now then
    out[#out + 1] = all[i]
    out[#out + 1] = all[i + 1]
  elseif expiry < now - 60000 then
    redis.call('HDEL', KEYS[1], all[i])
  end
end
return out
