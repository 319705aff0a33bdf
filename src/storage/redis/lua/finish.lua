-- Ends a commit across shards in one shard other than its home, once its home decided it:
-- a committed one moves the heads of the keys it wrote here (forward only); either way its
-- locks go.
--
-- KEYS[1]  heads (hash: user key -> id .. '1' for a value, '0' for a tombstone)
-- KEYS[2]  locks (hash: user key -> lock, see prepare.lua)
-- KEYS[3]  txlocks (hash: id -> the keys it locked here)
-- ARGV[1]  the commit's id (24 bytes)
-- ARGV[2]  'c' if it committed, 'a' if it never will
-- ARGV[3..] the keys it locked here
--
-- Returns 1.
local id = ARGV[1]
for i = 3, #ARGV do
  local lock = redis.call('HGET', KEYS[2], ARGV[i])
  if lock and string.sub(lock, 1, 24) == id then
    local kind = string.sub(lock, 25, 25)
    if ARGV[2] == 'c' and kind ~= 'r' then move_head(KEYS[1], ARGV[i], id, kind) end
    redis.call('HDEL', KEYS[2], ARGV[i])
  end
end
redis.call('HDEL', KEYS[3], id)
return 1
