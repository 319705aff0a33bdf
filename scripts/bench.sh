#!/usr/bin/env bash
# make bench: aft on the Redis backend against the same redis-server used directly, in one
# run, each workload direct then through aft (interleaved), 50 connections:
#
#   SET and GET with redis-benchmark, pipeline 1 and 16 (random keys out of 100,000);
#   TXN: MULTI, 2 GET, 2 SET, EXEC sent in one round trip (examples/txn_load.rs).
#
# Prints `workload direct aft ratio` (requests or transactions per second; ratio = aft/direct).
# Everything runs on this machine's loopback, so the load generators, Redis and aft share the
# CPUs: compare ratios within one run, not absolute figures across runs.
#
# Environment: BENCH_REQUESTS (redis-benchmark requests per run, default 200000),
# BENCH_TXNS (transactions per TXN run, default 50000), BENCH_ROUNDS (default 1).
set -euo pipefail
cd "$(dirname "$0")/.."

requests=${BENCH_REQUESTS:-200000}
txns=${BENCH_TXNS:-50000}
rounds=${BENCH_ROUNDS:-1}
clients=50
keyspace=100000

command -v redis-server >/dev/null && command -v redis-benchmark >/dev/null || {
  echo "bench: redis-server and redis-benchmark are needed (make deps)" >&2
  exit 1
}
cargo build --release --quiet --bin aft --example txn_load
aft=target/release/aft
txn_load=target/release/examples/txn_load

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

work=$(mktemp -d)
redis_pid=""
aft_pid=""
cleanup() {
  [[ -n $aft_pid ]] && kill "$aft_pid" 2>/dev/null && wait "$aft_pid" 2>/dev/null
  [[ -n $redis_pid ]] && kill "$redis_pid" 2>/dev/null && wait "$redis_pid" 2>/dev/null
  rm -rf "$work"
}
trap cleanup EXIT

wait_for() { # port
  for _ in $(seq 1 300); do
    redis-cli -p "$1" ping >/dev/null 2>&1 && return 0
    sleep 0.05
  done
  echo "bench: nothing answers on port $1" >&2
  exit 1
}

redis_port=$(free_port)
redis-server --port "$redis_port" --bind 127.0.0.1 --save '' --appendonly no \
  --dir "$work" --logfile "$work/redis.log" --daemonize no &
redis_pid=$!
wait_for "$redis_port"

aft_port=$(free_port)
"$aft" serve --listen "127.0.0.1:$aft_port" --backend "redis://127.0.0.1:$redis_port" \
  --data-dir "$work/aft" --log warn &
aft_pid=$!
wait_for "$aft_port"

# One figure: requests (or transactions) per second of `workload` against `port`.
run() { # workload port
  local workload=$1 port=$2
  case $workload in
    SET-P1) bench_redis "$port" set 1 ;;
    GET-P1) bench_redis "$port" get 1 ;;
    SET-P16) bench_redis "$port" set 16 ;;
    GET-P16) bench_redis "$port" get 16 ;;
    TXN) "$txn_load" --port "$port" --connections "$clients" --txns "$txns" \
      --keys "$keyspace" --csv | awk -F'"' '/"TXN"/ {print $4}' ;;
  esac
}

bench_redis() { # port test pipeline
  redis-benchmark -h 127.0.0.1 -p "$1" -t "$2" -P "$3" -c "$clients" -n "$requests" \
    -r "$keyspace" --csv 2>/dev/null | awk -F'"' -v t="${2^^}" '$2 == t {print $4}'
}

workloads=(SET-P1 GET-P1 SET-P16 GET-P16 TXN)
declare -A direct aft_rate
for w in "${workloads[@]}"; do direct[$w]=0; aft_rate[$w]=0; done
for round in $(seq 1 "$rounds"); do
  for w in "${workloads[@]}"; do
    d=$(run "$w" "$redis_port")
    a=$(run "$w" "$aft_port")
    [[ -n $d && -n $a ]] || { echo "bench: $w produced no figure" >&2; exit 1; }
    echo "round $round: $w direct $d aft $a" >&2
    direct[$w]=$(awk -v x="${direct[$w]}" -v y="$d" 'BEGIN {print x + y}')
    aft_rate[$w]=$(awk -v x="${aft_rate[$w]}" -v y="$a" 'BEGIN {print x + y}')
  done
done

printf '%-10s %12s %12s %7s\n' workload direct aft ratio
for w in "${workloads[@]}"; do
  awk -v w="$w" -v d="${direct[$w]}" -v a="${aft_rate[$w]}" -v r="$rounds" \
    'BEGIN {printf "%-10s %12.0f %12.0f %7.2f\n", w, d / r, a / r, (d > 0 ? a / d : 0)}'
done
