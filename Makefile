# The two commands: `make demo` and `make test`. Both run scripts/setup.sh first.
#
# Builds share one target directory outside the checkout, so a fresh clone does not rebuild
# RocksDB from source (about 15 minutes on 2 cores). Override with CARGO_TARGET_DIR=...
CARGO_TARGET_DIR ?= $(HOME)/.cache/sluice/target
export CARGO_TARGET_DIR
CARGO ?= cargo
DEMO_ARGS ?= --duration 20s

.PHONY: demo test check setup build lint bench bench-memory bench-kafka bench-webhook bench-serve bench-reconcile bench-recovery bench-commit golden exact clean-demo

# The shared target directory keeps every version of every test binary (about 0.5 GB each)
# it ever linked; those not relinked for a day are removed (cargo relinks them when needed).
# Test and bin executables have no extension; proc-macro libraries (.so) are kept.
setup:
	@./scripts/setup.sh
	@find "$(CARGO_TARGET_DIR)/release/deps" -maxdepth 1 -type f -perm -u+x ! -name '*.*' -mtime +1 -delete 2>/dev/null || true

build: setup
	$(CARGO) build --release --workspace --all-targets

demo: setup
	$(CARGO) run --release -p sluice --bin sluice -- demo $(DEMO_ARGS)

lint: setup
	$(CARGO) fmt --all --check
	$(CARGO) clippy --release --workspace --all-targets -- -D warnings

# The inner loop: format, lints, the unit tests of every crate, the operators' tests (dedup,
# order, drift on a real dataflow), and the end-to-end tests that need no broker, database or killed process (golden, exact, reference,
# restart, idle partitions, drift). `make test` runs everything.
check: setup
	$(CARGO) fmt --all --check
	$(CARGO) clippy --release --workspace --all-targets -- -D warnings
	$(CARGO) test --release --workspace --lib --bins
	$(CARGO) test --release -p sluice-operators --test dedup --test order --test drift
	$(CARGO) test --release -p sluice-tests --test golden --test exact --test reference --test restart --test idle --test drift

# Everything in release: RocksDB is built once, and the end-to-end tests are heavy. The Kafka
# tests need the project's broker (tansu, scripts/kafka.sh; SLUICE_KAFKA_PORT moves it), the
# transactional broker for the exactly-once tests (noida-db, `scripts/kafka.sh noida`: each test
# starts its own) and an independent client (confluent-kafka for Python). The broker-restart test keeps tansu's
# topics in an S3 server on the file system (s3s-fs, `scripts/kafka.sh s3`: built once, about
# 3 minutes). The CDC tests need PostgreSQL 15 with wal2json
# (scripts/postgres.sh; SLUICE_PG_PORT moves it, SLUICE_PG_CONNINFO points the tests elsewhere).
test: lint
	./scripts/postgres.sh start
	./scripts/kafka.sh start
	./scripts/kafka.sh pyclient >/dev/null
	./scripts/kafka.sh s3 >/dev/null
	./scripts/kafka.sh noida >/dev/null
	SLUICE_KAFKA_PYCLIENT="$$(./scripts/kafka.sh pyclient)" SLUICE_S3S_FS="$$(./scripts/kafka.sh s3)" SLUICE_NOIDA="$$(./scripts/kafka.sh noida)" \
	SLUICE_KAFKA_BROKERS=127.0.0.1:$${SLUICE_KAFKA_PORT:-19092} $(CARGO) test --release --workspace --no-fail-fast

bench-webhook: setup
	$(CARGO) run --release -p sluice-bench --bin sluice-bench -- webhook $(BENCH_ARGS)

bench-recovery: setup
	$(CARGO) run --release -p sluice-bench --bin sluice-bench -- recovery $(BENCH_ARGS)

bench-commit: setup
	$(CARGO) run --release -p sluice-bench --bin sluice-bench -- commit-cost $(BENCH_ARGS)

bench-reconcile: setup
	$(CARGO) run --release -p sluice-bench --bin sluice-bench -- reconcile $(BENCH_ARGS)

# Against both brokers: tansu (at-least-once is what holds there) and noida-db (transactions;
# started on a fresh data directory: it keeps its state in one JSON file that grows).
bench-kafka: setup
	./scripts/kafka.sh start
	./scripts/kafka.sh txn-stop
	./scripts/kafka.sh txn-start
	$(CARGO) run --release -p sluice-bench --bin sluice-bench -- kafka --brokers tansu=127.0.0.1:$${SLUICE_KAFKA_PORT:-19092},noida-db=127.0.0.1:$${SLUICE_TXN_PORT:-19093} $(BENCH_ARGS)
	./scripts/kafka.sh txn-stop

bench: setup
	$(CARGO) run --release -p sluice-bench --bin sluice-bench -- pipeline $(BENCH_ARGS)

# Resident memory with 10M dedup keys within the TTL and 1M entities' feature state in memory:
# the standard pipeline over 10M distinct events of 1M customers, 1 worker, every entity cached.
bench-memory: setup
	$(CARGO) run --release -p sluice-bench --bin sluice-bench -- pipeline --workers 1 --events 10000000 --customers 1000000 --cache-entities 1000000 $(BENCH_ARGS)

bench-serve: setup
	$(CARGO) run --release -p sluice-bench --bin sluice-bench -- serve $(BENCH_ARGS)

# Rewrites the golden fixture and its expected outputs (needs only python3).
golden:
	python3 tests/fixtures/golden/make_golden.py

# Rewrites the exact-output fixture and its expected outputs (needs only python3).
exact:
	python3 tests/fixtures/exact/make_exact.py

clean-demo:
	rm -rf sluice-demo
