-- Creates a commit record: the request that decides a commit.
--
-- KEYS[1]    rec (hash: id -> record)
-- KEYS[2]    log (sorted set of ids, all at score 0)
-- KEYS[3]    pending (sorted set: id -> start time in ms)
-- KEYS[4]    pendkeys (hash: id -> version keys)
-- KEYS[5]    the idempotency entry (a placeholder when the commit has no idempotency key)
-- KEYS[6]    tail (sorted set: id at its position)
-- KEYS[7]    seq (the position of the newest record)
-- KEYS[8]    heads (hash: user key -> id .. '1' for a value, '0' for a tombstone)
-- KEYS[9]    nodes (hash: node id -> 'expiry-ms ...')
-- KEYS[10]   locks (hash: user key -> the lock of a commit across shards)
-- KEYS[11..] the version keys to write (none when they were written before)
-- ARGV[1]    the commit's id (24 bytes)
-- ARGV[2]    the encoded record
-- ARGV[3]    '1' if the commit has an idempotency key
-- ARGV[4]    the idempotency entry's TTL in seconds
-- ARGV[5]    '1' if the commit's pending marker must be live (it is then removed)
-- ARGV[6]    the committing node's id, whose lease must be live ('' for none)
-- ARGV[7]    nc, the number of checks
-- ARGV[8]    nh, the number of heads to move
-- then nc pairs (user key, id read or '' for nothing read),
-- then nh pairs (user key, '1' for a value or '0' for a tombstone),
-- then one value per version key: the i-th goes to KEYS[10 + i]
--
-- Returns {1}: committed (now, or already: the record exists); {0, id}: the idempotency
-- key is taken by commit `id`; {2}: the pending marker is gone (reclaimed); {3}: the node's
-- lease expired (fenced); {4, i}: check i failed (another commit wrote the key first); {5, l, k}:
-- key `k` is locked by another commit (its lock `l`), which must be resolved first. In every
-- case but {1}, nothing was written.
local id = ARGV[1]
if redis.call('HEXISTS', KEYS[1], id) == 1 then return {1} end
if not lease_live(KEYS[9], ARGV[6]) then return {3} end
if ARGV[5] == '1' then
  local s = redis.call('ZSCORE', KEYS[3], id)
  if (not s) or tonumber(s) < 0 then return {2} end
end
if ARGV[3] == '1' then
  local existing = redis.call('GET', KEYS[5])
  if existing then return {0, existing} end
end
local nc, nh = tonumber(ARGV[7]), tonumber(ARGV[8])
local refused = locked_by_other(KEYS[10], id, 9, nc + nh) or failed_check(KEYS[8], 9, nc)
if refused then return refused end
local a = 9 + 2 * nc
for i = 1, nh do
  move_head(KEYS[8], ARGV[a], id, ARGV[a + 1])
  a = a + 2
end
for i = 11, #KEYS do
  redis.call('SET', KEYS[i], ARGV[a])
  a = a + 1
end
redis.call('HSET', KEYS[1], id, ARGV[2])
redis.call('ZADD', KEYS[2], 0, id)
redis.call('ZADD', KEYS[6], redis.call('INCR', KEYS[7]), id)
if ARGV[3] == '1' then redis.call('SET', KEYS[5], id, 'EX', ARGV[4]) end
if ARGV[5] == '1' then
  redis.call('ZREM', KEYS[3], id)
  redis.call('HDEL', KEYS[4], id)
end
return {1}
