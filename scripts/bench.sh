#!/usr/bin/env bash
# make bench: aft on the Redis backend against the same redis-server used directly, in one
# run, each workload direct then through aft (interleaved), 50 connections:
#
#   SET and GET with redis-benchmark, pipeline 1 and 16 (random keys out of 100,000);
#   TXN: MULTI, 2 GET, 2 SET, EXEC sent in one round trip (examples/txn_load.rs);
#   then the same three workloads (pipeline 1) with three aft nodes on the one Redis (`-3N`):
#   three load generators at once, one per node (direct: all three at Redis), summed.
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
more_pids=()
cleanup() {
  for pid in "${more_pids[@]}"; do kill "$pid" 2>/dev/null && wait "$pid" 2>/dev/null; done
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

bench_redis() { # port test pipeline [clients] [requests]
  redis-benchmark -h 127.0.0.1 -p "$1" -t "$2" -P "$3" -c "${4:-$clients}" -n "${5:-$requests}" \
    -r "$keyspace" --csv 2>/dev/null | awk -F'"' -v t="${2^^}" '$2 == t {print $4}'
}

# One figure for `workload` run as three load generators at once, on `ports` (three, or
# the same one three times), each with a third of the connections and of the work: the sum.
run_split() { # workload port port port
  local workload=$1; shift
  local i=0 pids=()
  for port in "$@"; do
    i=$((i + 1))
    case $workload in
      SET-3N) bench_redis "$port" set 1 $((clients / 3)) $((requests / 3)) >"$work/split.$i" & ;;
      GET-3N) bench_redis "$port" get 1 $((clients / 3)) $((requests / 3)) >"$work/split.$i" & ;;
      TXN-3N) "$txn_load" --port "$port" --connections $((clients / 3)) --txns $((txns / 3)) \
        --keys "$keyspace" --csv | awk -F'"' '/"TXN"/ {print $4}' >"$work/split.$i" & ;;
    esac
    pids+=($!)
  done
  wait "${pids[@]}"
  cat "$work"/split.* | awk '{s += $1} END {print s}'
  rm -f "$work"/split.*
}

declare -A direct aft_rate
# Adds one round's figures of a workload: direct, then through aft.
record() { # round workload direct aft
  [[ -n $3 && -n $4 ]] || { echo "bench: $2 produced no figure" >&2; exit 1; }
  echo "round $1: $2 direct $3 aft $4" >&2
  direct[$2]=$(awk -v x="${direct[$2]:-0}" -v y="$3" 'BEGIN {print x + y}')
  aft_rate[$2]=$(awk -v x="${aft_rate[$2]:-0}" -v y="$4" 'BEGIN {print x + y}')
}

workloads=(SET-P1 GET-P1 SET-P16 GET-P16 TXN)
for round in $(seq 1 "$rounds"); do
  for w in "${workloads[@]}"; do
    record "$round" "$w" "$(run "$w" "$redis_port")" "$(run "$w" "$aft_port")"
  done
done

# Two more nodes on the same Redis and prefix.
node_ports=("$aft_port")
for n in 2 3; do
  port=$(free_port)
  "$aft" serve --listen "127.0.0.1:$port" --backend "redis://127.0.0.1:$redis_port" \
    --data-dir "$work/aft$n" --log warn &
  more_pids+=($!)
  wait_for "$port"
  node_ports+=("$port")
done
split=(SET-3N GET-3N TXN-3N)
for round in $(seq 1 "$rounds"); do
  for w in "${split[@]}"; do
    record "$round" "$w" "$(run_split "$w" "$redis_port" "$redis_port" "$redis_port")" \
      "$(run_split "$w" "${node_ports[@]}")"
  done
done
workloads+=("${split[@]}")

printf '%-10s %12s %12s %7s\n' workload direct aft ratio
for w in "${workloads[@]}"; do
  awk -v w="$w" -v d="${direct[$w]}" -v a="${aft_rate[$w]}" -v r="$rounds" \
    'BEGIN {printf "%-10s %12.0f %12.0f %7.2f\n", w, d / r, a / r, (d > 0 ? a / d : 0)}'
done
