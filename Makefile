# synclink — the commands in the README.
#   make demo   two throwaway clusters, a linked table, changes flowing both ways
#   make test   every test: unit, in-database (#[pg_test]) and end-to-end on real clusters
#   make bench  side-by-side timings (release build)
# Each starts by installing what a fresh Debian machine with Rust is missing.

PG_CONFIG ?= /usr/lib/postgresql/15/bin/pg_config
PGRX_DATA ?= /tmp/synclink-pgrx-test
export PG_CONFIG

.PHONY: setup install released test unit e2e demo bench lint

setup:
	@bash scripts/setup.sh

# cargo pgrx install writes the current version's full script and copies the upgrade scripts
# (sql/synclink--a--b.sql); the released versions' full scripts, as shipped, go next to them so
# that CREATE EXTENSION synclink VERSION '<released>' works as well.
install: setup
	cargo pgrx install --pg-config $(PG_CONFIG)
	@for f in sql/synclink--[0-9.]*.sql; do \
	  case "$$f" in *--*--*) ;; *) install -m 644 "$$f" "$$($(PG_CONFIG) --sharedir)/extension/" ;; esac; \
	done

# A private PostgreSQL running the released 0.1.0 library, for the upgrade test (target/released/).
released: setup
	@bash scripts/released.sh 0.1.0 >/dev/null

# #[test] and #[pg_test] in the extension crate. initdb refuses to run as root, so as root
# the test cluster runs as the postgres OS user.
unit: setup
	@if [ "$$(id -u)" -eq 0 ]; then \
	  mkdir -p $(PGRX_DATA) && chown postgres $(PGRX_DATA) && \
	  cargo pgrx test pg15 --runas postgres --pgdata $(PGRX_DATA)/pgdata; \
	else \
	  cargo pgrx test pg15; \
	fi

# End-to-end scenarios on real clusters started by pgrx-tests/ (needs the extension installed,
# and the released version for the upgrade test).
e2e: install released
	cargo test -p synclink-e2e --tests -- --test-threads=2

test: lint unit e2e

demo:
	@bash scripts/demo.sh

bench:
	@bash scripts/bench.sh

lint: setup
	cargo fmt --all -- --check
	cargo clippy --all-targets --features pg15 -- -D warnings
	cargo clippy -p synclink-e2e --all-targets -- -D warnings
