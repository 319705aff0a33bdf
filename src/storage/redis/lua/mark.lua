-- Writes the pending marker of a cluster commit, before its versions.
--
-- KEYS[1]  pending (sorted set: id -> start time in ms)
-- KEYS[2]  pendkeys (hash: id -> version keys)
-- KEYS[3]  the idempotency entry (a placeholder when the commit has no idempotency key)
-- ARGV[1]  the commit's id (24 bytes)
-- ARGV[2]  the version keys the commit writes (u32 BE length, key; repeated)
-- ARGV[3]  '1' if the commit has an idempotency key
--
-- Returns {1}: marked, at the server's time; {0, id}: the idempotency key is taken by
-- commit `id`, nothing written.
if ARGV[3] == '1' then
  local existing = redis.call('GET', KEYS[3])
  if existing then return {0, existing} end
end
local t = redis.call('TIME')
local ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZADD', KEYS[1], ms, ARGV[1])
redis.call('HSET', KEYS[2], ARGV[1], ARGV[2])
return {1}
