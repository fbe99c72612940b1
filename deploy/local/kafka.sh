#!/usr/bin/env bash
# Single-node Apache Kafka for development and CI: the official broker jars from Maven Central (resolved by Maven
# from deploy/local/kafka/pom.xml), KRaft combined mode (broker + controller in one JVM), loopback only.
#
#   deploy/local/kafka.sh up       resolve jars if missing, format storage once, start, wait until ready (idempotent)
#   deploy/local/kafka.sh down     stop the broker this script started (by its pid file), nothing else
#   deploy/local/kafka.sh status   print whether it runs, its pid and its bootstrap address
#
# State: ${METERD_SERVICES_DIR:-/tmp/meterd-services}/kafka/{libs,config,data,log,pid,port}. The broker port
# (19092, or the next free one) is written to the `port` file. Needs java (17) and mvn on PATH.
# Environment: KAFKA_PORT (first port tried), KAFKA_READY_TIMEOUT (s), KAFKA_HEAP (default 512m).
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
STATE=${METERD_SERVICES_DIR:-/tmp/meterd-services}/kafka
PIDFILE=$STATE/pid
PORTFILE=$STATE/port
READY_TIMEOUT=${KAFKA_READY_TIMEOUT:-90}
HEAP=${KAFKA_HEAP:-512m}

log() { echo "kafka: $*" >&2; }

running() {
	[ -f "$PIDFILE" ] || return 1
	local pid
	pid=$(cat "$PIDFILE")
	[ -n "$pid" ] && kill -0 "$pid" 2>/dev/null || return 1
	# The pid must still be our broker (pids are reused): its command line names our server.properties.
	tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -q -- "$STATE/config/server.properties"
}

port_free() { ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

pick_port() {
	local p=$1
	while ! port_free "$p"; do p=$((p + 1)); done
	echo "$p"
}

# Ready: the broker logged that it started, and its port accepts connections.
ready() {
	grep -q 'Kafka Server started' "$STATE/log/server.log" 2>/dev/null && ! port_free "$1"
}

resolve_jars() {
	if [ -f "$STATE/libs/.complete" ] && [ "$(cat "$STATE/libs/.complete")" = "$(sha256sum "$HERE/kafka/pom.xml" | cut -d' ' -f1)" ]; then
		return 0
	fi
	command -v java >/dev/null || { log "java not found (Java 17 is required)"; return 1; }
	command -v mvn >/dev/null || { log "mvn not found"; return 1; }
	log "resolving the Apache Kafka jars with Maven into $STATE/libs"
	rm -rf "$STATE/libs"
	mkdir -p "$STATE/libs"
	mvn -q -f "$HERE/kafka/pom.xml" dependency:copy-dependencies -DincludeScope=runtime -DoutputDirectory="$STATE/libs"
	sha256sum "$HERE/kafka/pom.xml" | cut -d' ' -f1 >"$STATE/libs/.complete"
}

write_config() {
	local port=$1 controller_port=$2
	mkdir -p "$STATE/config" "$STATE/data" "$STATE/log"
	cat >"$STATE/config/server.properties" <<PROPS
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@127.0.0.1:$controller_port
listeners=PLAINTEXT://127.0.0.1:$port,CONTROLLER://127.0.0.1:$controller_port
advertised.listeners=PLAINTEXT://127.0.0.1:$port
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT
log.dirs=$STATE/data
num.partitions=4
offsets.topic.replication.factor=1
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
group.initial.rebalance.delay.ms=0
auto.create.topics.enable=false
log.retention.hours=504
log.message.timestamp.type=LogAppendTime
PROPS
	cat >"$STATE/config/log4j.properties" <<PROPS
log4j.rootLogger=INFO, file
log4j.appender.file=org.apache.log4j.RollingFileAppender
log4j.appender.file.File=$STATE/log/server.log
log4j.appender.file.MaxFileSize=50MB
log4j.appender.file.MaxBackupIndex=3
log4j.appender.file.layout=org.apache.log4j.PatternLayout
log4j.appender.file.layout.ConversionPattern=[%d] %p %m (%c)%n
PROPS
}

up() {
	if running && ready "$(cat "$PORTFILE")"; then
		log "already running (pid $(cat "$PIDFILE"), bootstrap 127.0.0.1:$(cat "$PORTFILE"))"
		return 0
	fi
	if running; then
		log "pid $(cat "$PIDFILE") runs but is not ready; restarting it"
		down
	fi
	case "${KAFKA_PORT:-19092}" in
	*[!0-9]* | "") log "KAFKA_PORT: ${KAFKA_PORT} is not a port number"; return 2 ;;
	esac
	mkdir -p "$STATE"
	resolve_jars
	local port controller_port
	port=$(pick_port "${KAFKA_PORT:-19092}")
	controller_port=$(pick_port $((port + 1)))
	write_config "$port" "$controller_port"
	local cp="$STATE/libs/*"
	local jvm=(java "-Xmx$HEAP" "-Xms$HEAP" -XX:+UseG1GC -Djava.awt.headless=true
		"-Dlog4j.configuration=file:$STATE/config/log4j.properties" "-Dkafka.logs.dir=$STATE/log" -cp "$cp")
	if [ ! -f "$STATE/data/meta.properties" ]; then
		local cluster_id
		cluster_id=$("${jvm[@]}" kafka.tools.StorageTool random-uuid 2>>"$STATE/log/stdout.log")
		log "formatting storage (cluster id $cluster_id)"
		"${jvm[@]}" kafka.tools.StorageTool format -t "$cluster_id" -c "$STATE/config/server.properties" >>"$STATE/log/stdout.log" 2>&1
	fi
	# A restart on another port keeps the formatted storage: node id and cluster id do not depend on the port.
	: >"$STATE/log/server.log"
	setsid "${jvm[@]}" kafka.Kafka "$STATE/config/server.properties" >>"$STATE/log/stdout.log" 2>&1 </dev/null &
	echo $! >"$PIDFILE"
	echo "$port" >"$PORTFILE"
	local deadline=$((SECONDS + READY_TIMEOUT))
	until ready "$port"; do
		if ! kill -0 "$(cat "$PIDFILE")" 2>/dev/null; then
			log "broker exited during start; last log lines:"
			tail -n 30 "$STATE/log/server.log" "$STATE/log/stdout.log" >&2 2>/dev/null || true
			rm -f "$PIDFILE"
			return 1
		fi
		if [ "$SECONDS" -ge "$deadline" ]; then
			log "not ready after ${READY_TIMEOUT}s (logs: $STATE/log); stopping it"
			tail -n 30 "$STATE/log/server.log" >&2 2>/dev/null || true
			down
			return 1
		fi
		sleep 0.5
	done
	log "up: pid $(cat "$PIDFILE"), bootstrap 127.0.0.1:$port, logs $STATE/log"
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
		echo "kafka: running, pid $(cat "$PIDFILE"), bootstrap 127.0.0.1:$(cat "$PORTFILE"), state $STATE"
	else
		echo "kafka: not running (state $STATE)"
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
