-- Prepares the part of a commit across shards that lies in one shard other than its home:
-- checks the heads of the keys it read (as the commit script does) and locks every key it
-- reads or writes here until its home shard decides it (see finish.lua).
--
-- KEYS[1]  heads (hash: user key -> id .. '1' for a value, '0' for a tombstone)
-- KEYS[2]  nodes (hash: node id -> 'expiry-ms ...')
-- KEYS[3]  locks (hash: user key -> lock)
-- KEYS[4]  txlocks (hash: id -> the keys it locked here, u32 BE length, key; repeated)
-- ARGV[1]  the commit's id (24 bytes)
-- ARGV[2]  the committing node's id, whose lease must be live ('' for none)
-- ARGV[3]  nc, the number of checks
-- ARGV[4]  nh, the number of heads the commit moves here
-- ARGV[5]  the lock's tail: the home shard and the node, 'home node'
-- ARGV[6]  the keys locked, encoded for txlocks
-- then nc pairs (user key, id read or '' for nothing read),
-- then nh pairs (user key, '1' for a value or '0' for a tombstone)
--
-- A lock is id .. kind .. tail, kind 'r' for a key only read, else '1' or '0'.
-- Returns {1}: prepared (now, or already); {3}: the node's lease expired; {4, i}: check i
-- failed; {5, l, k}: key `k` is locked by another commit (lock `l`). In every case but {1},
-- nothing was written.
local id = ARGV[1]
if redis.call('HEXISTS', KEYS[4], id) == 1 then return {1} end
if not lease_live(KEYS[2], ARGV[2]) then return {3} end
local nc, nh = tonumber(ARGV[3]), tonumber(ARGV[4])
local refused = locked_by_other(KEYS[3], id, 7, nc + nh) or failed_check(KEYS[1], 7, nc)
if refused then return refused end
local a = 7
for i = 1, nc do
  redis.call('HSET', KEYS[3], ARGV[a], id .. 'r' .. ARGV[5])
  a = a + 2
end
for i = 1, nh do
  redis.call('HSET', KEYS[3], ARGV[a], id .. ARGV[a + 1] .. ARGV[5])
  a = a + 2
end
redis.call('HSET', KEYS[4], id, ARGV[6])
return {1}
