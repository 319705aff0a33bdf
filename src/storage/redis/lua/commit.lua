-- Creates a commit record: the request that decides a commit.
--
-- KEYS[1]    rec (hash: id -> record)
-- KEYS[2]    log (sorted set of ids)
-- KEYS[3]    pending (sorted set: id -> start time in ms)
-- KEYS[4]    pendkeys (hash: id -> version keys)
-- KEYS[5]    the idempotency entry (a placeholder when the commit has no idempotency key)
-- KEYS[6..]  the version keys to write (none when they were written before)
-- ARGV[1]    the commit's id (24 bytes)
-- ARGV[2]    the encoded record
-- ARGV[3]    '1' if the commit has an idempotency key
-- ARGV[4]    the idempotency entry's TTL in seconds
-- ARGV[5]    '1' if the commit's pending marker must be live (it is then removed)
-- ARGV[6..]  one value per version key: ARGV[i] goes to KEYS[i]
--
-- Returns {1}: committed (now, or already: the record exists); {0, id}: the idempotency
-- key is taken by commit `id`, nothing written; {2}: the pending marker is gone (reclaimed),
-- nothing written.
local id = ARGV[1]
if redis.call('HEXISTS', KEYS[1], id) == 1 then return {1} end
if ARGV[5] == '1' then
  local s = redis.call('ZSCORE', KEYS[3], id)
  if (not s) or tonumber(s) < 0 then return {2} end
end
if ARGV[3] == '1' then
  local existing = redis.call('GET', KEYS[5])
  if existing then return {0, existing} end
end
for i = 6, #KEYS do redis.call('SET', KEYS[i], ARGV[i]) end
redis.call('HSET', KEYS[1], id, ARGV[2])
redis.call('ZADD', KEYS[2], 0, id)
if ARGV[3] == '1' then redis.call('SET', KEYS[5], id, 'EX', ARGV[4]) end
if ARGV[5] == '1' then
  redis.call('ZREM', KEYS[3], id)
  redis.call('HDEL', KEYS[4], id)
end
return {1}
