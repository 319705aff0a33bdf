#!/usr/bin/env bash
# redis-cli against aft: single commands, MULTI/EXEC, inline input, --pipe.
# Usage: redis_cli.sh PORT
set -euo pipefail
port=$1
cli() { redis-cli -p "$port" "$@"; }
expect() {
  local want=$1; shift
  local got
  got=$("$@")
  if [[ "$got" != "$want" ]]; then
    echo "redis-cli: '$*' gave '$got', want '$want'" >&2
    exit 1
  fi
}
expect PONG cli ping
expect OK cli flushall
expect OK cli set greeting "hello world"
expect "hello world" cli get greeting
expect "$(printf 'OK\nQUEUED\nQUEUED\nQUEUED\nOK\n2\n2')" \
  bash -c "printf 'MULTI\nSET a 1\nINCR a\nGET a\nEXEC\n' | redis-cli -p $port"
# An aborted EXEC (the watched key changed) prints an empty line, as with Redis.
expect "$(printf 'OK\nOK\nOK\nQUEUED\n')" \
  bash -c "printf 'WATCH a\nSET a 5\nMULTI\nINCR a\nEXEC\n' | redis-cli -p $port"
# Mass insertion: redis-cli --pipe sends raw RESP and counts the replies.
for i in $(seq 1 1000); do
  printf '*3\r\n$3\r\nSET\r\n$%d\r\nkey:%d\r\n$1\r\nv\r\n' "$((${#i} + 4))" "$i"
done > /tmp/aft-pipe.$$
out=$(redis-cli -p "$port" --pipe < /tmp/aft-pipe.$$)
rm -f /tmp/aft-pipe.$$
grep -q "errors: 0, replies: 1000" <<<"$out" || { echo "redis-cli --pipe: $out" >&2; exit 1; }
expect 1002 cli dbsize
expect "ERR unknown command 'nope', with args beginning with: " cli nope
echo "redis-cli $(redis-cli --version | cut -d' ' -f2): ok"
