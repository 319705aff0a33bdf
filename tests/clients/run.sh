#!/usr/bin/env bash
# Runs real Redis client libraries against a real aft process: redis-py 8 (RESP3 by
# default), ioredis 6 and redis-cli. Installs the clients into target/clients on first use.
# Usage: [AFT_TEST_BACKEND=dynamodb] tests/clients/run.sh PATH_TO_AFT_BINARY
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
aft=${1:-$root/target/debug/aft}
work=$root/target/clients
mkdir -p "$work"

if [[ ! -x $work/venv/bin/python ]] || ! "$work/venv/bin/python" -c 'import redis' 2>/dev/null; then
  python3 -m venv "$work/venv"
  "$work/venv/bin/pip" install --quiet --disable-pip-version-check "redis==8.1.0"
fi
if [[ ! -d $work/node_modules/ioredis ]]; then
  (cd "$work" && [[ -f package.json ]] || echo '{"private":true}' > "$work/package.json")
  (cd "$work" && npm install --silent --no-audit --no-fund ioredis@6.0.0)
fi

port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
data=$(mktemp -d)
backend=()
emulator_pid=
# AFT_TEST_BACKEND=dynamodb: aft on a DynamoDB emulator (the dynamodb_emulator example, built
# next to the binary by `cargo build --all-targets`) on a free loopback port.
if [[ ${AFT_TEST_BACKEND:-} == dynamodb ]]; then
  emulator=$(dirname "$aft")/examples/dynamodb_emulator
  coproc EMULATOR { exec "$emulator" 0; }
  emulator_pid=$EMULATOR_PID
  read -r -t 30 line <&"${EMULATOR[0]}" || { echo "the DynamoDB emulator did not start" >&2; exit 1; }
  endpoint=${line#listening on }
  backend=(--backend "dynamodb://aft?endpoint=$endpoint&region=us-east-1&create_table=true")
  echo "clients: aft on DynamoDB (emulator at $endpoint)"
fi
"$aft" serve --listen "127.0.0.1:$port" --data-dir "$data" --log warn "${backend[@]}" &
pid=$!
trap 'kill $pid 2>/dev/null; wait $pid 2>/dev/null; [[ -n $emulator_pid ]] && kill $emulator_pid 2>/dev/null; rm -rf "$data"' EXIT
for _ in $(seq 1 200); do
  redis-cli -p "$port" ping >/dev/null 2>&1 && break
  sleep 0.05
done

passed=0
failed=0
run() {
  local name=$1; shift
  if "$@"; then passed=$((passed + 1)); else echo "FAILED: $name" >&2; failed=$((failed + 1)); fi
}
run redis-py "$work/venv/bin/python" "$here/redis_py.py" "$port"
run ioredis env NODE_PATH="$work/node_modules" node "$here/ioredis.js" "$port"
run redis-cli "$here/redis_cli.sh" "$port"
echo "clients: $passed passed, $failed failed"
[[ $failed -eq 0 ]]
