-- Removes pending markers (their versions are gone, or their commit has its record).
--
-- KEYS[1]  pending (sorted set: id -> start time in ms)
-- KEYS[2]  pendkeys (hash: id -> version keys)
-- ARGV     the ids
--
-- Returns 1.
for i = 1, #ARGV do
  redis.call('ZREM', KEYS[1], ARGV[i])
  redis.call('HDEL', KEYS[2], ARGV[i])
end
return 1
