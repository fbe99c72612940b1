#!/usr/bin/env bash
# bench/kafka.sh: Kafka -> ClickHouse with one collector (issues 8 and 11), side by side with the ceiling of the
# same rows inserted by clickhouse-client (FORMAT JSONEachRow), in one run. Needs the local services
# (`make services-up`); uses a throwaway topic, group and database, removed at the end (KEEP=1 keeps them).
#
#   bench/kafka.sh                      # full size: 2,000,000 events
#   EVENTS=50000 bench/kafka.sh         # smoke size (CI): seconds
#
# Phases:
#   1. build meterd; create the topic (PARTITIONS partitions) and the database through `meterd migrate` and a
#      short-lived collector start;
#   2. produce EVENTS events to the topic with `meterd events gen --to kafka://` (DUP_RATE re-sent ones), so the
#      collector then reads a full topic: the measure is the collector's, not the producer's;
#   3. start one `meterd serve --role collector` (a new group starts at the earliest offset) and time it from the
#      first stored event to all stored (polling ClickHouse), with its peak RSS (VmHWM) and CPU;
#   4. ceiling: export the rows the collector wrote (events and event_values) as JSONEachRow and time
#      clickhouse-client inserting them into empty tables of the same schema; report collector / ceiling.
# Kafka's JVM, the collector and ClickHouse share the machine's cores: compare figures of one run.
set -euo pipefail

EVENTS=${EVENTS:-2000000}
PARTITIONS=${PARTITIONS:-4}
BATCH=${BATCH:-50000}   # kafka.batch_size; kafka.batch_bytes keeps its default (16MiB)
DUP_RATE=${DUP_RATE:-0.01}
TIMEOUT=${TIMEOUT:-1800}
KEEP=${KEEP:-0}
PROFILE=${PROFILE:-0}   # 1: a CPU profile of the collector while it collects (go tool pprof -top), kept in OUT
OUT=${OUT:-.}

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
services=${METERD_SERVICES_DIR:-/tmp/meterd-services}
ch_port=$(cat "$services/clickhouse/port" 2>/dev/null) || { echo "no local ClickHouse: run make services-up" >&2; exit 1; }
kafka_port=$(cat "$services/kafka/port" 2>/dev/null) || { echo "no local Kafka: run make services-up" >&2; exit 1; }
broker=127.0.0.1:$kafka_port
work=$(mktemp -d "${TMPDIR:-/tmp}/meterd-kafkabench.XXXXXX")
suffix=$(od -An -N4 -tx1 /dev/urandom | tr -d ' \n')
db=meterd_bench_$suffix
ceil_db=meterd_ceiling_$suffix
topic=bench-events-$suffix
collector_pid=""

chq() { clickhouse-client --host 127.0.0.1 --port "$ch_port" "$@"; }
say() { printf '%s %s\n' "$(date -u +%T)" "$*" >&2; }
bounded() { timeout --signal=TERM --kill-after=30 "$TIMEOUT" "$@"; }
now_ms() { date +%s%3N; }
proc_ticks() { awk '{print $14+$15}' "/proc/$1/stat"; }

cleanup() {
	local rc=$?
	if [[ -n $collector_pid ]] && kill -0 "$collector_pid" 2>/dev/null; then
		kill -TERM "$collector_pid" 2>/dev/null || true
		wait "$collector_pid" 2>/dev/null || true
	fi
	if [[ $KEEP == 1 ]]; then
		echo "kept $work, databases $db and $ceil_db, topic $topic" >&2
	else
		chq -q "DROP DATABASE IF EXISTS $db" || true
		chq -q "DROP DATABASE IF EXISTS $ceil_db" || true
		rm -rf "$work"
	fi
	exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

say "build (in $work)"
(cd "$repo" && go build -o "$work/meterd" ./cmd/meterd)

cat >"$work/meterd.yaml" <<EOF
meters:
  - {key: tokens, event_type: llm_request, aggregation: SUM, value_property: \$.tokens}
listen: 127.0.0.1:0
store: {driver: clickhouse, clickhouse: {addr: "127.0.0.1:$ch_port", database: $db}}
kafka:
  brokers: ["$broker"]
  topic: $topic
  dlq_topic: $topic-dlq
  group_id: bench-collectors-$suffix
  control_topic: bench-control-$suffix
  scheduler_group_id: bench-schedulers-$suffix
  partitions: $PARTITIONS
  batch_size: $BATCH
  batch_wait: 200ms
EOF

stop_collector() {
	kill -TERM "$collector_pid"
	wait "$collector_pid" || { say "collector exited with an error"; cat "$work/collector.log" >&2; exit 1; }
	collector_pid=""
}

say "create the topics and the database"
"$work/meterd" migrate --config "$work/meterd.yaml" >/dev/null
# The collector creates the topics at start (EnsureTopics); it stops once it is listening.
"$work/meterd" serve --config "$work/meterd.yaml" --role collector --log-level info 2>"$work/collector.log" &
collector_pid=$!
for _ in $(seq 1 300); do
	grep -q 'msg=listening' "$work/collector.log" && break
	kill -0 "$collector_pid" 2>/dev/null || { cat "$work/collector.log" >&2; exit 1; }
	sleep 0.1
done
stop_collector

say "produce $EVENTS events to $topic (duplicate rate $DUP_RATE)"
t=$(now_ms)
bounded "$work/meterd" events gen --to "kafka://$broker/$topic" --count "$EVENTS" --batch "$BATCH" --concurrency 4 \
	--duplicate-rate "$DUP_RATE" --type llm_request --property tokens --subjects 100000 --id-prefix k- \
	--start "$(date -u -d '-30 min' +%FT%TZ)" --span 20m | tee "$work/produce.txt"
produce_ms=$(( $(now_ms) - t ))

say "collect with one collector"
start_ms=$(now_ms)
"$work/meterd" serve --config "$work/meterd.yaml" --role collector --log-level info --pprof 2>>"$work/collector.log" &
collector_pid=$!
profiled=0
cpu0=$(proc_ticks "$collector_pid")
first_ms="" ; last=-1 ; stable=0
deadline=$(( $(date +%s) + TIMEOUT ))
while :; do
	n=$(chq -q "SELECT count() FROM $db.events" 2>/dev/null || echo 0)
	if [[ -z $first_ms && $n -gt 0 ]]; then
		first_ms=$(now_ms); first_n=$n
		if [[ $PROFILE == 1 ]]; then
			addr=$(sed -n 's/.*msg=listening addr=\([^ ]*\).*/\1/p' "$work/collector.log" | tail -n1)
			curl -fsS -o "$OUT/collector.pprof" "http://$addr/debug/pprof/profile?seconds=${PROFILE_SECONDS:-8}" &
			profiled=$!
		fi
	fi
	# Done when the count stops moving and the group has committed everything (lag 0 on every partition).
	if [[ $n -eq $last && $n -gt 0 ]]; then stable=$((stable + 1)); else stable=0; done_ms=$(now_ms); fi
	last=$n
	if (( stable >= 10 )); then
		addr=$(sed -n 's/.*msg=listening addr=\([^ ]*\).*/\1/p' "$work/collector.log" | tail -n1)
		lag=$(curl -fsS "http://$addr/metrics" | awk '/^meterd_collector_lag_messages/ {s+=$2} END {print s+0}')
		[[ $lag == 0 ]] && break
	fi
	(( $(date +%s) < deadline )) || { say "timed out: $n stored"; exit 1; }
	sleep 0.1
done
hwm=$(awk '/^VmHWM/ {print $2}' "/proc/$collector_pid/status")
if (( profiled > 0 )); then
	wait "$profiled" && (cd "$repo" && go tool pprof -top -nodecount=25 "$work/meterd" "$OUT/collector.pprof" 2>/dev/null | head -35) >&2
fi
cpu1=$(proc_ticks "$collector_pid")
stop_collector
stored=$(chq -q "SELECT count() FROM $db.events")
values=$(chq -q "SELECT count() FROM $db.event_values")
# The rate from the first stored batch to the last leaves out the group join; a run so small that its first batch
# holds most events is timed from the collector's start instead (join included).
collect_ms=$(( done_ms - first_ms )) counted=$(( stored - first_n ))
if (( 2 * counted < stored )); then collect_ms=$(( done_ms - start_ms )) counted=$stored; fi
collect_eps=$(awk -v n="$counted" -v ms="$collect_ms" 'BEGIN {printf "%.0f", (ms > 0 ? n * 1000 / ms : 0)}')

say "ceiling: the same rows through clickhouse-client FORMAT JSONEachRow"
chq -q "CREATE DATABASE $ceil_db"
chq -q "CREATE TABLE $ceil_db.events AS $db.events"
chq -q "CREATE TABLE $ceil_db.event_values AS $db.event_values"
ev_cols="seq, source, id, type, subject, time_ms, hash, raw, received_ms"
val_cols="meter, time_ms, subject, source, id, seq, value, key"
chq -q "SELECT $ev_cols FROM $db.events FORMAT JSONEachRow" >"$work/events.json"
chq -q "SELECT $val_cols FROM $db.event_values FORMAT JSONEachRow" >"$work/values.json"
t=$(now_ms)
chq -q "INSERT INTO $ceil_db.events ($ev_cols) FORMAT JSONEachRow" <"$work/events.json"
chq -q "INSERT INTO $ceil_db.event_values ($val_cols) FORMAT JSONEachRow" <"$work/values.json"
ceil_ms=$(( $(now_ms) - t ))
ceil_rows=$(chq -q "SELECT count() FROM $ceil_db.events")
[[ $ceil_rows == "$stored" ]] || { say "ceiling stored $ceil_rows rows, want $stored"; exit 1; }
ceil_eps=$(awk -v n="$stored" -v ms="$ceil_ms" 'BEGIN {printf "%.0f", n * 1000 / ms}')
clk=$(getconf CLK_TCK)

cat <<EOF

machine    $(nproc) cores, $(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -n1), $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo); $(date -u +%F); ClickHouse $(chq -q 'SELECT version()'), Kafka on the same machine
produce    $EVENTS events (duplicate rate $DUP_RATE) to $PARTITIONS partitions in $(awk -v ms="$produce_ms" 'BEGIN {printf "%.1f", ms/1000}') s
collector  $stored events stored ($values meter values), $collect_eps events/s ($counted events in $(awk -v ms="$collect_ms" 'BEGIN {printf "%.1f", ms/1000}') s), batches of $BATCH
           peak RSS $(( hwm / 1024 )) MiB, CPU $(awk -v a="$cpu0" -v b="$cpu1" -v c="$clk" 'BEGIN {printf "%.1f", (b-a)/c}') s
ceiling    clickhouse-client JSONEachRow, the same rows (events and meter values): $ceil_eps events/s ($(awk -v ms="$ceil_ms" 'BEGIN {printf "%.1f", ms/1000}') s)
ratio      collector / ceiling = $(awk -v a="$collect_eps" -v b="$ceil_eps" 'BEGIN {printf "%.2f", a/b}')
RESULT kafka events=$stored collector_eps=$collect_eps ceiling_eps=$ceil_eps collector_rss_mib=$(( hwm / 1024 ))
EOF
