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
-- KEYS[10..] the version keys to write (none when they were written before)
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
-- then one value per version key: the i-th goes to KEYS[9 + i]
--
-- Returns {1}: committed (now, or already: the record exists); {0, id}: the idempotency
-- key is taken by commit `id`; {2}: the pending marker is gone (reclaimed); {3}: the node's
-- lease expired (fenced); {4, i}: check i failed (another commit wrote the key first). In
-- every case but {1}, nothing was written.
local id = ARGV[1]
if redis.call('HEXISTS', KEYS[1], id) == 1 then return {1} end
if ARGV[6] ~= '' then
  local lease = redis.call('HGET', KEYS[9], ARGV[6])
  local t = redis.call('TIME')
  local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  if (not lease) or tonumber(string.match(lease, '^%d+')) < now then return {3} end
end
if ARGV[5] == '1' then
  local s = redis.call('ZSCORE', KEYS[3], id)
  if (not s) or tonumber(s) < 0 then return {2} end
end
if ARGV[3] == '1' then
  local existing = redis.call('GET', KEYS[5])
  if existing then return {0, existing} end
end
-- Byte order (not the locale's collation) of two 24-byte ids.
local function older(a, b)
  for i = 1, 24 do
    local x, y = string.byte(a, i), string.byte(b, i)
    if x ~= y then return x < y end
  end
  return false
end
local nc, nh = tonumber(ARGV[7]), tonumber(ARGV[8])
local a = 9
for i = 1, nc do
  local head = redis.call('HGET', KEYS[8], ARGV[a])
  if head then
    local read = ARGV[a + 1]
    local same = string.sub(head, 1, 24) == read
    local gone = read == '' and string.sub(head, 25) == '0'
    if not (same or gone) then return {4, i - 1} end
  end
  a = a + 2
end
for i = 1, nh do
  local head = redis.call('HGET', KEYS[8], ARGV[a])
  if (not head) or older(string.sub(head, 1, 24), id) then
    redis.call('HSET', KEYS[8], ARGV[a], id .. ARGV[a + 1])
  end
  a = a + 2
end
for i = 10, #KEYS do
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
