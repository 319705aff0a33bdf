-- Functions the scripts that check leases, heads and locks share: the backend prepends this
-- file to each of them (see script.rs), so that every script stays one atomic chunk.

-- The server's time in ms.
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

-- Whether `node`'s lease in the hash `nodes` is live now ('' for no node: always).
local function lease_live(nodes, node)
  if node == '' then return true end
  local lease = redis.call('HGET', nodes, node)
  return lease ~= false and tonumber(string.match(lease, '^%d+')) >= now_ms()
end

-- Byte order (not the locale's collation) of two 24-byte ids.
local function older(a, b)
  for i = 1, 24 do
    local x, y = string.byte(a, i), string.byte(b, i)
    if x ~= y then return x < y end
  end
  return false
end

-- The first of `n` user keys at ARGV[from], ARGV[from + 2], … locked in the hash `locks` by
-- a commit other than `id`: {5, lock, key}; nil if none is. One call when nothing is locked
-- in the shard (always, on a log of one shard).
local function locked_by_other(locks, id, from, n)
  if n == 0 or redis.call('EXISTS', locks) == 0 then return nil end
  for i = from, from + 2 * (n - 1), 2 do
    local lock = redis.call('HGET', locks, ARGV[i])
    if lock and string.sub(lock, 1, 24) ~= id then return {5, lock, ARGV[i]} end
  end
  return nil
end

-- The first of `n` checks, pairs (user key, id read or '') at ARGV[from], … whose key's head
-- in the hash `heads` is neither the version read nor (nothing read) a tombstone: {4, i}
-- (from 0); nil if every check passes. A key without a head passes.
local function failed_check(heads, from, n)
  local a = from
  for i = 1, n do
    local head = redis.call('HGET', heads, ARGV[a])
    if head then
      local read = ARGV[a + 1]
      local same = string.sub(head, 1, 24) == read
      local gone = read == '' and string.sub(head, 25) == '0'
      if not (same or gone) then return {4, i - 1} end
    end
    a = a + 2
  end
  return nil
end

-- Moves the head of `key` in the hash `heads` to `id` .. `kind`, unless it names a newer id.
local function move_head(heads, key, id, kind)
  local head = redis.call('HGET', heads, key)
  if (not head) or older(string.sub(head, 1, 24), id) then
    redis.call('HSET', heads, key, id .. kind)
  end
end

