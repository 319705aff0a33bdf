-- Decides how many shards the log of a prefix has: the first node to ask does.
--
-- KEYS[1]  the count (string)
-- KEYS[2]  nodes of a log of one shard, KEYS[3] its seq, KEYS[4] its rec: a log kept before
--          shards existed is one shard
-- ARGV[1]  the count this node would choose
--
-- Returns the count.
local n = redis.call('GET', KEYS[1])
if n then return tonumber(n) end
if redis.call('EXISTS', KEYS[2], KEYS[3], KEYS[4]) > 0 then n = 1 else n = tonumber(ARGV[1]) end
redis.call('SET', KEYS[1], n)
return n
