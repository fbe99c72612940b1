#!/usr/bin/env bash
# bench/ingest.sh: end-to-end ingest benchmark (issue 3). Sustained HTTP ingest into SQLite, batches of 1,000, with
# PRELOAD events already stored and a share of duplicates, compared with the raw store ceiling on the same store in
# the same run. Loopback only; everything lives in a temp dir that is removed at the end (KEEP=1 keeps it).
#
#   bench/ingest.sh                                  # full size: 10M preloaded, 2M measured (about 15 minutes)
#   PRELOAD=100000 MEASURE=50000 bench/ingest.sh     # smoke size (CI): seconds
#
# Phases:
#   1. build meterd and bench/ingestbench;
#   2. preload PRELOAD events straight into the store (ingestbench preload: the real validator and Store.Write,
#      without HTTP, so preloading is not the long part); they are the events `meterd events gen` would send;
#   3. start `meterd serve`, warm up with WARMUP events over HTTP, then measure MEASURE new events posted by
#      `meterd events gen --to` (BATCH per request, CONCURRENCY requests in flight, DUP_RATE re-sent events):
#      events/s, request latency p50/p99, and the server's peak RSS (VmHWM of /proc/PID/status);
#   4. stop serve, then measure the store ceiling on the same store: CEILING new events, validated beforehand,
#      written with the same batch size and concurrency (ingestbench ceiling), and report HTTP/ceiling.
# The machine may be shared: compare the figures of one run (the ratio), not across runs.
set -euo pipefail

PRELOAD=${PRELOAD:-10000000}
MEASURE=${MEASURE:-2000000}
WARMUP=${WARMUP:-$(( MEASURE / 20 ))}
CEILING=${CEILING:-$MEASURE}
BATCH=${BATCH:-1000}
CONCURRENCY=${CONCURRENCY:-4}
DUP_RATE=${DUP_RATE:-0.01}
TIMEOUT=${TIMEOUT:-3600}   # seconds; bounds each phase
KEEP=${KEEP:-0}

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
work=$(mktemp -d "${TMPDIR:-/tmp}/meterd-bench.XXXXXX")
server_pid=""

cleanup() {
	local rc=$?
	if [[ -n $server_pid ]] && kill -0 "$server_pid" 2>/dev/null; then
		kill -TERM "$server_pid" 2>/dev/null || true
		wait "$server_pid" 2>/dev/null || true
	fi
	if [[ $KEEP == 1 ]]; then
		echo "kept $work" >&2
	else
		rm -rf "$work"
	fi
	exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

say() { printf '%s %s\n' "$(date -u +%T)" "$*" >&2; }
# CPU time in clock ticks: all CPUs busy, one process, and this shell's finished children (seconds).
busy_ticks() { awk '/^cpu / {print $2+$3+$4+$7+$8+$9}' /proc/stat; }
proc_ticks() { awk '{print $14+$15}' "/proc/$1/stat"; }
# children_s FILE: `times` must run in this shell, not in a $(...) subshell, to see its children.
children_s() { awk 'NR==2 {split($1,u,"m"); split($2,s,"m"); printf "%.2f", u[1]*60+u[2]+s[1]*60+s[2]}' "$1"; }
bounded() { timeout --signal=TERM --kill-after=30 "$TIMEOUT" "$@"; }

# Every event is dated in the last half hour, so none is too old, and the first hour close of any of them is due
# at least 85 minutes from now (close_delay 115m below): no close runs during the benchmark. Each phase has its own
# id prefix, so the measured events are new and only DUP_RATE of them are duplicates, and its own time range after
# the one before, as live traffic is newer than what is stored: new rows go to the end of the time index.
t0=$(( $(date +%s) - 30 * 60 ))
range() { date -u -d "@$(( t0 + $1 * 60 ))" +%FT%TZ; } # minutes after t0

say "build (in $work)"
(cd "$repo" && go build -o "$work/meterd" ./cmd/meterd && go build -o "$work/ingestbench" ./bench/ingestbench)

db="$work/data/meterd.db"
cat >"$work/meterd.yaml" <<EOF
meters:
  - key: tokens
    event_type: llm_request
    aggregation: SUM
    value_property: \$.tokens
schedule:
  close_delay: 115m
  deadline: 2h
  push_budget: 5m
listen: 127.0.0.1:0
store:
  driver: sqlite
  sqlite:
    path: $db
EOF

gen_flags=(--type llm_request --property tokens)

say "preload $PRELOAD events"
bounded "$work/ingestbench" preload --db "$db" --count "$PRELOAD" --id-prefix pre- \
	--start "$(range 0)" --span 20m --concurrency "$CONCURRENCY" | tee "$work/preload.txt"

say "start meterd serve"
"$work/meterd" serve --config "$work/meterd.yaml" --log-level info 2>"$work/serve.log" &
server_pid=$!
addr=""
for _ in $(seq 1 600); do
	addr=$(sed -n 's/.*msg=listening addr=\([^ ]*\).*/\1/p' "$work/serve.log" | head -n1)
	[[ -n $addr ]] && curl -fsS "http://$addr/readyz" >/dev/null 2>&1 && break
	kill -0 "$server_pid" 2>/dev/null || { cat "$work/serve.log" >&2; exit 1; }
	sleep 0.1
done
[[ -n $addr ]] || { say "serve did not come up"; cat "$work/serve.log" >&2; exit 1; }
url="http://$addr/v1/events"

if (( WARMUP > 0 )); then
	say "warm up: $WARMUP events"
	bounded "$work/meterd" events gen --to "$url" --count "$WARMUP" --batch "$BATCH" --concurrency "$CONCURRENCY" \
		--id-prefix warm- --start "$(range 20)" --span 1m "${gen_flags[@]}" | tee "$work/warmup.txt"
fi

say "measure: $MEASURE events over HTTP, batches of $BATCH, $CONCURRENCY in flight, duplicate rate $DUP_RATE"
times >"$work/times0"; cpu0=$(proc_ticks "$server_pid"); all0=$(busy_ticks)
bounded "$work/meterd" events gen --to "$url" --count "$MEASURE" --batch "$BATCH" --concurrency "$CONCURRENCY" \
	--duplicate-rate "$DUP_RATE" --id-prefix m- --start "$(range 21)" --span 3m "${gen_flags[@]}" | tee "$work/measure.txt"
times >"$work/times1"; cpu1=$(proc_ticks "$server_pid"); all1=$(busy_ticks)
hwm=$(awk '/^VmHWM/ {print $2}' "/proc/$server_pid/status")
kill -TERM "$server_pid"
wait "$server_pid" || { say "serve exited with an error"; cat "$work/serve.log" >&2; exit 1; }
server_pid=""

say "store ceiling: $CEILING new events on the same store"
bounded "$work/ingestbench" ceiling --db "$db" --count "$CEILING" --batch "$BATCH" --concurrency "$CONCURRENCY" \
	--duplicate-rate "$DUP_RATE" --id-prefix ceil- --start "$(range 24)" --span 2m | tee "$work/ceiling.txt"
"$work/ingestbench" count --db "$db" | tee "$work/count.txt"

# Summary.
http_eps=$(sed -n 's/.*: \([0-9]*\) events\/s;.*/\1/p' "$work/measure.txt")
ceil_eps=$(sed -n 's/.*: \([0-9]*\) events\/s;.*/\1/p' "$work/ceiling.txt")
p50=$(sed -n 's/.*latency p50 \([^ ]*\) .*/\1/p' "$work/measure.txt")
p99=$(sed -n 's/.* p99 \([^ ]*\) max.*/\1/p' "$work/measure.txt")
dups=$(sed -n 's/.*duplicates \([0-9]*\),.*/\1/p' "$work/measure.txt")
measure_s=$(sed -n 's/.*) in \([^:]*\):.*/\1/p' "$work/measure.txt")
clk=$(getconf CLK_TCK)
cpu_s=$(awk -v a="$cpu0" -v b="$cpu1" -v c="$clk" 'BEGIN {printf "%.1f", (b-a)/c}')
gen_s=$(awk -v a="$(children_s "$work/times0")" -v b="$(children_s "$work/times1")" 'BEGIN {printf "%.1f", b-a}')
# What the rest of the machine used meanwhile: the figures are only comparable when this is near 0.
other_s=$(awk -v a="$all0" -v b="$all1" -v c="$clk" -v s="$cpu_s" -v g="$gen_s" 'BEGIN {o=(b-a)/c-s-g; printf "%.1f", o<0?0:o}')
db_mb=$(du -m "$db" | cut -f1)
cat <<EOF

machine      $(nproc) cores, $(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -n1), $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo); $(date -u +%F)
store        $PRELOAD preloaded (+$WARMUP warm-up), $(du -h "$db" | cut -f1) ($db_mb MB) after the run
HTTP ingest  $http_eps events/s ($MEASURE events, $dups duplicates, batches of $BATCH, $CONCURRENCY in flight; $measure_s)
latency      p50 $p50, p99 $p99 per request
serve        peak RSS $(( hwm / 1024 )) MiB, CPU ${cpu_s}s during the measure (gen ${gen_s}s, other processes ${other_s}s)
ceiling      $ceil_eps events/s (Store.Write alone, same store, same batches; other processes $(sed -n 's/.*other processes \([^ ]*\)$/\1/p' "$work/ceiling.txt"))
ratio        HTTP / ceiling = $(awk -v a="$http_eps" -v b="$ceil_eps" 'BEGIN {printf "%.2f\n", a/b}')
RESULT ingest stored=$(( PRELOAD + WARMUP )) http_eps=$http_eps p50=$p50 p99=$p99 serve_rss_mib=$(( hwm / 1024 )) ceiling_eps=$ceil_eps other_cpu_s=$other_s
EOF
