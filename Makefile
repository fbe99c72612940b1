# Local services for the integration tests (build tag `integration`) and trials of the scale-out deployment.
# State lives in $${METERD_SERVICES_DIR:-/tmp/meterd-services}; see deploy/local/*.sh.
.PHONY: services-up services-down services-status test test-integration bench bench-smoke

services-up:
	deploy/local/clickhouse.sh up
	deploy/local/kafka.sh up

services-down:
	deploy/local/kafka.sh down
	deploy/local/clickhouse.sh down

services-status:
	-deploy/local/clickhouse.sh status
	-deploy/local/kafka.sh status

test:
	go test ./...

# Needs `make services-up` first; fails (never skips) when ClickHouse is not reachable.
test-integration:
	go test -count=1 -tags integration ./store/clickhouse/... ./stream/...
	go test -count=1 -tags integration -run '^(TestClickHouseEndToEnd|TestScaleOutEndToEnd|TestScaleOutSurvivesClickHouseRestart|TestScaleOutSurvivesKafkaRestart)$$' ./cmd/meterd/

# Every benchmark of docs/performance.md in one run (full sizes, about 20 minutes; needs services-up).
# It rewrites the generated section of docs/performance.md. bench-smoke runs the same at tiny sizes into a temp
# file: it keeps the command working and asserts nothing about time.
bench:
	bench/run.sh

bench-smoke:
	SIZE=smoke OUT=$$(mktemp) bench/run.sh
