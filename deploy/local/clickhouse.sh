#!/usr/bin/env bash
# Single-node ClickHouse for development and CI: Debian's clickhouse-server run as a plain local process (never
# systemd), with its config, data, logs and pid file under one state folder, listening on loopback only.
#
#   deploy/local/clickhouse.sh up       install if missing, start, wait until `SELECT 1` answers (idempotent)
#   deploy/local/clickhouse.sh down     stop the server this script started (by its pid file), nothing else
#   deploy/local/clickhouse.sh status   print whether it runs, its pid and its native port
#
# State: ${METERD_SERVICES_DIR:-/tmp/meterd-services}/clickhouse/{config,data,log,tmp,pid,port}.
# The native port (19000, or the next free one) is written to the `port` file; tests read it from there
# (or from METERD_TEST_CLICKHOUSE). Environment: CLICKHOUSE_PORT (first port tried), CLICKHOUSE_READY_TIMEOUT (s).
set -euo pipefail

STATE=${METERD_SERVICES_DIR:-/tmp/meterd-services}/clickhouse
PIDFILE=$STATE/pid
PORTFILE=$STATE/port
READY_TIMEOUT=${CLICKHOUSE_READY_TIMEOUT:-60}

log() { echo "clickhouse: $*" >&2; }

running() {
	[ -f "$PIDFILE" ] || return 1
	local pid
	pid=$(cat "$PIDFILE")
	[ -n "$pid" ] && kill -0 "$pid" 2>/dev/null || return 1
	# The pid must still be our server (pids are reused): check its command line names our config.
	tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -q -- "$STATE/config/config.xml"
}

port_free() { ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

pick_port() {
	local p=$1
	while ! port_free "$p"; do p=$((p + 1)); done
	echo "$p"
}

ready() { clickhouse-client --host 127.0.0.1 --port "$1" -q 'SELECT 1' >/dev/null 2>&1; }

install() {
	command -v clickhouse-server >/dev/null 2>&1 && command -v clickhouse-client >/dev/null 2>&1 && return 0
	log "installing Debian's clickhouse-server and clickhouse-client"
	export DEBIAN_FRONTEND=noninteractive
	apt-get update -qq
	apt-cache policy clickhouse-server | sed -n '1,3p' >&2
	# The package's postinst may try to start a systemd service; there is none here, and we never use it.
	apt-get install -y -qq --no-install-recommends clickhouse-server clickhouse-client >/dev/null
}

write_config() {
	local port=$1 http_port=$2 interserver_port=$3
	mkdir -p "$STATE/config" "$STATE/data" "$STATE/log" "$STATE/tmp" "$STATE/user_files" "$STATE/format_schemas"
	cat >"$STATE/config/config.xml" <<XML
<?xml version="1.0"?>
<yandex>
    <logger>
        <level>information</level>
        <log>$STATE/log/clickhouse-server.log</log>
        <errorlog>$STATE/log/clickhouse-server.err.log</errorlog>
        <size>100M</size>
        <count>3</count>
    </logger>
    <listen_host>127.0.0.1</listen_host>
    <tcp_port>$port</tcp_port>
    <http_port>$http_port</http_port>
    <interserver_http_port>$interserver_port</interserver_http_port>
    <path>$STATE/data/</path>
    <tmp_path>$STATE/tmp/</tmp_path>
    <user_files_path>$STATE/user_files/</user_files_path>
    <format_schema_path>$STATE/format_schemas/</format_schema_path>
    <users_config>$STATE/config/users.xml</users_config>
    <default_profile>default</default_profile>
    <default_database>default</default_database>
    <timezone>UTC</timezone>
    <max_concurrent_queries>100</max_concurrent_queries>
    <mark_cache_size>268435456</mark_cache_size>
    <uncompressed_cache_size>268435456</uncompressed_cache_size>
</yandex>
XML
	cat >"$STATE/config/users.xml" <<XML
<?xml version="1.0"?>
<yandex>
    <profiles>
        <default>
            <max_memory_usage>2000000000</max_memory_usage>
            <load_balancing>random</load_balancing>
        </default>
    </profiles>
    <users>
        <default>
            <password></password>
            <networks><ip>127.0.0.1</ip><ip>::1</ip></networks>
            <profile>default</profile>
            <quota>default</quota>
        </default>
    </users>
    <quotas>
        <default>
            <interval>
                <duration>3600</duration>
                <queries>0</queries><errors>0</errors><result_rows>0</result_rows>
                <read_rows>0</read_rows><execution_time>0</execution_time>
            </interval>
        </default>
    </quotas>
</yandex>
XML
}

up() {
	if running; then
		local port
		port=$(cat "$PORTFILE")
		if ready "$port"; then
			log "already running (pid $(cat "$PIDFILE"), native port $port)"
			return 0
		fi
	fi
	case "${CLICKHOUSE_PORT:-19000}" in
	*[!0-9]* | "") log "CLICKHOUSE_PORT: ${CLICKHOUSE_PORT} is not a port number"; return 2 ;;
	esac
	install
	mkdir -p "$STATE"
	local port http_port interserver_port
	port=$(pick_port "${CLICKHOUSE_PORT:-19000}")
	http_port=$(pick_port $((port + 1000)))
	interserver_port=$(pick_port $((http_port + 1)))
	write_config "$port" "$http_port" "$interserver_port"
	local bin
	bin=$(command -v clickhouse-server)
	# setsid: the server outlives this shell and is not hit by the caller's Ctrl-C; stdout/stderr are kept too.
	setsid "$bin" --config-file="$STATE/config/config.xml" >>"$STATE/log/stdout.log" 2>&1 </dev/null &
	echo $! >"$PIDFILE"
	echo "$port" >"$PORTFILE"
	local deadline=$((SECONDS + READY_TIMEOUT))
	until ready "$port"; do
		if ! kill -0 "$(cat "$PIDFILE")" 2>/dev/null; then
			log "server exited during start; last log lines:"
			tail -n 30 "$STATE/log/clickhouse-server.err.log" "$STATE/log/stdout.log" >&2 2>/dev/null || true
			rm -f "$PIDFILE"
			return 1
		fi
		if [ "$SECONDS" -ge "$deadline" ]; then
			log "not ready after ${READY_TIMEOUT}s (logs: $STATE/log); stopping it"
			tail -n 30 "$STATE/log/clickhouse-server.err.log" >&2 2>/dev/null || true
			down
			return 1
		fi
		sleep 0.5
	done
	log "up: pid $(cat "$PIDFILE"), native port $port, version $(clickhouse-client --port "$port" -q 'SELECT version()'), logs $STATE/log"
}

down() {
	if ! running; then
		log "not running (nothing started by this script)"
		rm -f "$PIDFILE"
		return 0
	fi
	local pid
	pid=$(cat "$PIDFILE")
	kill -TERM "$pid"
	for _ in $(seq 1 60); do
		kill -0 "$pid" 2>/dev/null || break
		sleep 0.5
	done
	if kill -0 "$pid" 2>/dev/null; then
		log "pid $pid did not stop in 30s; killing it"
		kill -KILL "$pid" 2>/dev/null || true
	fi
	rm -f "$PIDFILE"
	log "stopped pid $pid (data kept in $STATE/data)"
}

status() {
	if running; then
		echo "clickhouse: running, pid $(cat "$PIDFILE"), native port $(cat "$PORTFILE"), state $STATE"
	else
		echo "clickhouse: not running (state $STATE)"
		return 3
	fi
}

case "${1:-}" in
up) up ;;
down) down ;;
status) status ;;
*)
	echo "usage: $0 {up|down|status}" >&2
	exit 2
	;;
esac
