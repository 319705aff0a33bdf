-- Decides, in its home shard, a commit across shards whose lock another commit found: it
-- committed (its record exists), it never will (no marker, or a marker orphan reclamation
-- or this script took), or it is still in flight. A marker older than the grace period, or
-- whose node's lease expired, is taken: the commit script then refuses to create the record.
--
-- KEYS[1]  rec (hash: id -> record)
-- KEYS[2]  pending (sorted set: id -> start time in ms, negative once taken)
-- KEYS[3]  nodes (hash: node id -> 'expiry-ms ...')
-- ARGV[1]  the commit's id (24 bytes)
-- ARGV[2]  its node's id ('' for none: only the grace period counts)
-- ARGV[3]  the grace period in ms
--
-- Returns 'c' (committed), 'a' (never will) or 'w' (in flight).
local id = ARGV[1]
if redis.call('HEXISTS', KEYS[1], id) == 1 then return 'c' end
local s = redis.call('ZSCORE', KEYS[2], id)
if (not s) or tonumber(s) < 0 then return 'a' end
local dead = ARGV[2] ~= '' and not lease_live(KEYS[3], ARGV[2])
if dead or now_ms() - tonumber(s) > tonumber(ARGV[3]) then
  redis.call('ZADD', KEYS[2], -1, id)
  return 'a'
end
return 'w'
