-- Deletes commit records and their log entries, and the idempotency entries that still name
-- them (an entry taken over by a later commit is kept).
--
-- KEYS[1]    rec (hash: id -> record)
-- KEYS[2]    log (sorted set of ids)
-- KEYS[3]    tail (sorted set: id at its position)
-- KEYS[4..]  idempotency entries
-- ARGV[1]    n, the number of ids
-- ARGV[2..n+1]  the ids
-- ARGV[n+2..]   for each idempotency entry KEYS[j], the id it must hold to be deleted
--
-- Returns 1.
local n = tonumber(ARGV[1])
for i = 2, n + 1 do
  redis.call('HDEL', KEYS[1], ARGV[i])
  redis.call('ZREM', KEYS[2], ARGV[i])
  redis.call('ZREM', KEYS[3], ARGV[i])
end
for j = 4, #KEYS do
  if redis.call('GET', KEYS[j]) == ARGV[n + j - 2] then redis.call('DEL', KEYS[j]) end
end
return 1
