-- Drops the heads of keys whose last version, a tombstone, was collected.
--
-- KEYS[1]  heads (hash: user key -> id .. '1' or '0')
-- ARGV     pairs (user key, the collected tombstone's id)
--
-- A head that names another version stays. Returns 1.
for i = 1, #ARGV, 2 do
  if redis.call('HGET', KEYS[1], ARGV[i]) == ARGV[i + 1] .. '0' then
    redis.call('HDEL', KEYS[1], ARGV[i])
  end
end
return 1
