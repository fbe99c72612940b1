#!/usr/bin/env bash
# bench/close.sh: hour-close benchmark (issues 7 and 11). For each size, bench/closebench fills a new store with one
# hour of N events over INSTANCES instances (bulk SQL, not timed), closes the hour with the real aggregate.Closer
# (timed), checks every closed instance-hour against what was loaded, and prints one RESULT line; this script
# runs the matrix and prints a table. Benchmarks report numbers; nothing here asserts a time.
#
#   bench/close.sh                                                   # full matrix (an hour or more)
#   SIZES_SQLITE=10000 SIZES_CLICKHOUSE=10000 INSTANCES=1000 bench/close.sh   # smoke size (CI): seconds
#   SIZES_SQLITE= SIZES_CLICKHOUSE=10000000 bench/close.sh          # ClickHouse 10M only
#
# Knobs (environment):
#   SIZES_SQLITE      events per SQLite run, space-separated (default "1000000 10000000"; empty: no SQLite run)
#   SIZES_CLICKHOUSE  events per ClickHouse run (default "1000000 10000000 30000000"; empty: no ClickHouse run)
#   INSTANCES         instances the events are spread over (default 100000)
#   TIMEOUT           seconds allowed to each run, setup included (default 3600)
#   KEEP              1 keeps the temp dir and the ClickHouse databases (default 0: removed at exit)
#   PROFILE_DIR       when set, a CPU profile of each timed close is written there (close-STORE-EVENTS.pprof)
#   FLAGS             extra closebench flags for every run (e.g. --meter-aggregation MAX)
#   CLICKHOUSE_FLAGS  extra closebench flags for the ClickHouse runs (e.g. --log-level info)
#   OUT               when set, the RESULT lines are appended to this file
# ClickHouse is METERD_TEST_CLICKHOUSE (host:port), else 127.0.0.1 and the port in
# ${METERD_SERVICES_DIR:-/tmp/meterd-services}/clickhouse/port (deploy/local/clickhouse.sh up); each run uses a
# database of its own, dropped at the end. The machine may be shared: each RESULT says how much CPU the whole
# machine used during the close (cpu_machine_s) beside the benchmark's own (cpu_self_s) and the load before it.
set -euo pipefail

SIZES_SQLITE=${SIZES_SQLITE-1000000 10000000}
SIZES_CLICKHOUSE=${SIZES_CLICKHOUSE-1000000 10000000 30000000}
INSTANCES=${INSTANCES:-100000}
TIMEOUT=${TIMEOUT:-3600}
KEEP=${KEEP:-0}
PROFILE_DIR=${PROFILE_DIR:-}
FLAGS=${FLAGS:-}
CLICKHOUSE_FLAGS=${CLICKHOUSE_FLAGS:-}
OUT=${OUT:-}

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
say() { printf '%s %s\n' "$(date -u +%T)" "$*" >&2; }

addr=""
if [[ -n ${SIZES_CLICKHOUSE// /} ]]; then
	if [[ -n ${METERD_TEST_CLICKHOUSE:-} ]]; then
		addr=$METERD_TEST_CLICKHOUSE
	else
		portfile=${METERD_SERVICES_DIR:-/tmp/meterd-services}/clickhouse/port
		if [[ ! -s $portfile ]]; then
			say "no ClickHouse: set METERD_TEST_CLICKHOUSE=host:port or run deploy/local/clickhouse.sh up ($portfile is missing); SIZES_CLICKHOUSE= skips ClickHouse"
			exit 2
		fi
		addr=127.0.0.1:$(tr -d '[:space:]' <"$portfile")
	fi
fi

work=$(mktemp -d "${TMPDIR:-/tmp}/meterd-closebench.XXXXXX")
databases=() # ClickHouse databases created by this run, dropped at exit unless KEEP=1

cleanup() {
	local rc=$?
	if [[ $KEEP == 1 ]]; then
		echo "kept $work${databases[*]:+ and ClickHouse databases ${databases[*]}}" >&2
	else
		for db in "${databases[@]}"; do
			"$work/closebench" --store clickhouse --addr "$addr" --database "$db" --drop-only 2>/dev/null ||
				say "could not drop ClickHouse database $db"
		done
		rm -rf "$work"
	fi
	exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

say "build (in $work)"
(cd "$repo" && go build -o "$work/closebench" ./bench/closebench)

results=()
failures=()
failed=0
# run STORE EVENTS: one closebench run; its RESULT line is kept, a failure is reported and the matrix goes on.
run() {
	local store=$1 events=$2 n=${#results[@]}
	local args=(--store "$store" --events "$events" --instances "$INSTANCES")
	if [[ $store == sqlite ]]; then
		mkdir -p "$work/sqlite-$n"
		args+=(--db "$work/sqlite-$n/meterd.db")
	else
		local db="closebench_$(date +%s)_$$_$n"
		databases+=("$db")
		args+=(--addr "$addr" --database "$db")
		[[ $KEEP == 1 ]] || args+=(--drop)
		# shellcheck disable=SC2206 # word splitting of the flags is wanted
		args+=($CLICKHOUSE_FLAGS)
	fi
	[[ -z $PROFILE_DIR ]] || { mkdir -p "$PROFILE_DIR"; args+=(--cpuprofile "$PROFILE_DIR/close-$store-$events.pprof"); }
	# shellcheck disable=SC2206
	args+=($FLAGS)
	say "$store: $events events over $INSTANCES instances"
	local out="$work/run-$n.out" err="$work/run-$n.err" rc=0
	timeout --signal=TERM --kill-after=30 "$TIMEOUT" "$work/closebench" "${args[@]}" >"$out" \
		2> >(grep --line-buffered -v 'below the minimum supported' | tee "$err" >&2) || rc=$?
	local line
	line=$(grep '^RESULT ' "$out" || true)
	if (( rc != 0 )) || [[ -z $line ]]; then
		line="RESULT store=$store events=$events instances=$INSTANCES FAILED=exit_$rc"
		failed=1
		sleep 0.2 # let tee finish the error file
		failures+=("$store $events: $(grep '^closebench: ' "$err" | tail -n1 | cut -c1-300)")
	fi
	echo "$line"
	results+=("$line")
	[[ -z $OUT ]] || echo "$line" >>"$OUT"
	[[ $KEEP == 1 ]] || rm -rf "$work/sqlite-$n"
}

for n in $SIZES_SQLITE; do run sqlite "$n"; done
for n in $SIZES_CLICKHOUSE; do run clickhouse "$n"; done

# Summary: one table row per RESULT line.
echo
echo "machine: $(nproc) cores, $(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -n1), $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo); $(date -u +%F)"
printf '%s\n' "${results[@]}" | awk '
function v(k) { return (k in f) ? f[k] : "-" }
BEGIN {
	print "| store | events | instances | close s | rows | peak RSS MiB | server peak MiB | CPU self/machine s | load before |"
	print "|---|---:|---:|---:|---:|---:|---:|---:|---:|"
}
{
	delete f
	for (i = 2; i <= NF; i++) { split($i, kv, "="); f[kv[1]] = kv[2] }
	close_s = ("FAILED" in f) ? "FAILED (" f["FAILED"] ")" : v("close_s")
	printf "| %s | %s | %s | %s | %s | %s | %s | %s/%s | %s |\n", v("store"), v("events"), v("instances"), close_s, v("rows"),
		v("rss_mib"), v("server_peak_mib"), v("cpu_self_s"), v("cpu_machine_s"), v("load1_before")
}'
for f in "${failures[@]}"; do echo "FAILED $f"; done
exit "$failed"
