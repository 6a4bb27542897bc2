# Wrenn — a thin wrapper over Meson + Ninja.
#   make          build everything into build/
#   make test     install what is missing, build with ASan+UBSan, run every test; ends with
#                 the line "N passed, N failed"
#   make check    make test + clang-format check + a short run of every fuzz target
#   make up       install, build and start a single-node Wrenn (control plane + host agent +
#                 the minimal guest image) and print how to use it
#   make down     stop it
#   make bench    build optimised and run the benchmarks

BUILD      ?= build
TEST_BUILD ?= build-asan
FUZZ_SECS  ?= 20

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

up:
	@bash scripts/up.sh

down:
	@for p in .wrenn/cp.pid .wrenn/agent.pid; do \
		if [ -f $$p ]; then kill $$(cat $$p) 2>/dev/null || true; rm -f $$p; fi; \
	done; echo "stopped (sandboxes still running are re-adopted by the next make up)"

bench:
	meson setup build-release --buildtype=release >/dev/null 2>&1 || true
	ninja -C build-release
	@for b in build-release/bench/*_bench build-release/bench/*/*_bench; do [ -x "$$b" ] && "$$b"; done; true

clean:
	rm -rf $(BUILD) $(TEST_BUILD) build-fuzz build-release
