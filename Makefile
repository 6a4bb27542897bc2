# Wrenn — a thin wrapper over Meson + Ninja.
#   make          build everything into build/
#   make test     install what is missing, build with ASan+UBSan, run every test; ends with
#                 the line "N passed, N failed"
#   make check    make test + clang-format check + a short run of every fuzz target
#   make up       build and start a local Wrenn (for now: wrenn-envd on localhost:49983)
#   make down     stop it
#   make bench    build optimised and run the benchmarks

BUILD      ?= build
TEST_BUILD ?= build-asan
FUZZ_SECS  ?= 20
RUN_DIR    ?= .wrenn

.PHONY: all deps test check format format-check fuzz up down bench clean

all: $(BUILD)/build.ninja
	ninja -C $(BUILD)

$(BUILD)/build.ninja:
	meson setup $(BUILD)

deps:
	@if [ "$$(id -u)" = 0 ]; then bash scripts/deps.sh; else echo "make deps: run as root to install packages"; fi

$(TEST_BUILD)/build.ninja:
	meson setup $(TEST_BUILD) -Db_sanitize=address,undefined -Db_lundef=false

test: deps $(TEST_BUILD)/build.ninja
	ninja -C $(TEST_BUILD)
	@rm -f $(TEST_BUILD)/meson-logs/testlog.json $(TEST_BUILD)/e2e-summary.txt
	-ASAN_OPTIONS=detect_leaks=1:abort_on_error=0 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
		meson test -C $(TEST_BUILD) --print-errorlogs --num-processes 2
	-WRENN_ENVD_BIN=$(TEST_BUILD)/src/envd/wrenn-envd bash tests/e2e/run.sh 2>&1 | tee $(TEST_BUILD)/e2e-summary.txt
	@python3 tests/summary.py $(TEST_BUILD)/meson-logs/testlog.json $(TEST_BUILD)/e2e-summary.txt > $(TEST_BUILD)/summary.txt; rc=$$?; cat $(TEST_BUILD)/summary.txt; exit $$rc

format:
	clang-format -i $$(git ls-files '*.c' '*.h')

format-check:
	clang-format --dry-run --Werror $$(git ls-files '*.c' '*.h')

fuzz:
	bash fuzz/run.sh $(FUZZ_SECS)

check: format-check test fuzz

up: deps all
	@mkdir -p $(RUN_DIR)
	@if [ -f $(RUN_DIR)/envd.pid ] && kill -0 $$(cat $(RUN_DIR)/envd.pid) 2>/dev/null; then \
		echo "wrenn-envd already running (pid $$(cat $(RUN_DIR)/envd.pid))"; \
	else \
		$(BUILD)/src/envd/wrenn-envd --port 49983 --run-dir $(RUN_DIR)/run \
			>$(RUN_DIR)/envd.log 2>&1 & echo $$! > $(RUN_DIR)/envd.pid; \
		for i in $$(seq 50); do curl -fs -o /dev/null http://127.0.0.1:49983/health && break; sleep 0.1; done; \
	fi
	@curl -fs -o /dev/null http://127.0.0.1:49983/health && \
	echo "wrenn-envd is up on http://localhost:49983 (log: $(RUN_DIR)/envd.log; stop: make down)" && \
	echo "Try it:" && \
	echo "  curl -s -X POST localhost:49983/process.Process/List -H 'Content-Type: application/json' -d '{}'" && \
	echo "  E2B_DEBUG=true node -e \"const {Sandbox}=require('e2b');Sandbox.create().then(s=>s.commands.run('uname -a')).then(r=>console.log(r.stdout))\""

down:
	@if [ -f $(RUN_DIR)/envd.pid ]; then kill $$(cat $(RUN_DIR)/envd.pid) 2>/dev/null || true; rm -f $(RUN_DIR)/envd.pid; echo stopped; fi

bench:
	meson setup build-release --buildtype=release >/dev/null 2>&1 || true
	ninja -C build-release
	@for b in build-release/bench/*_bench build-release/bench/*/*_bench; do [ -x "$$b" ] && "$$b"; done; true

clean:
	rm -rf $(BUILD) $(TEST_BUILD) build-fuzz build-release
