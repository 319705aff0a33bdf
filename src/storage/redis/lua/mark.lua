-- Writes the pending marker of a cluster commit, before its versions.
--
-- KEYS[1]  pending (sorted set: id -> start time in ms)
-- KEYS[2]  pendkeys (hash: id -> version keys)
-- KEYS[3]  the idempotency entry (a placeholder when the commit has no idempotency key)
-- KEYS[4]  rec (hash: id -> record)
-- ARGV[1]  the commit's id (24 bytes)
-- ARGV[2]  the version keys the commit writes (u32 BE length, key; repeated)
-- ARGV[3]  '1' if the commit has an idempotency key
--
-- Returns {1}: marked, at the server's time (or the commit already has its record); {0, id}:
-- the idempotency key is taken by commit `id`, nothing written; {2}: the commit's marker was
-- taken by orphan reclamation (the same commit sent again, by any node): it can never
-- commit, nothing written — a fresh marker would let it create its record over versions
-- being deleted.
if redis.call('HEXISTS', KEYS[4], ARGV[1]) == 1 then return {1} end
local s = redis.call('ZSCORE', KEYS[1], ARGV[1])
if s and tonumber(s) < 0 then return {2} end
if ARGV[3] == '1' then
  local existing = redis.call('GET', KEYS[3])
  if existing then return {0, existing} end
end
local t = redis.call('TIME')
local ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZADD', KEYS[1], ms, ARGV[1])
redis.call('HSET', KEYS[2], ARGV[1], ARGV[2])
return {1}
