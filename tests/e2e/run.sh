#!/usr/bin/env bash
# End-to-end tests of wrenn-envd with the official npm `e2b` SDK, once per pinned SDK version.
#
# Starts the real wrenn-envd on 127.0.0.1/::1 port 49983 (where the SDK's debug mode,
# E2B_DEBUG=true, sends every envd request), runs `node --test` over test/*.test.mjs with the TAP
# reporter for each SDK alias in package.json, stops envd, and prints
# `e2e: N passed, N failed` totalled over the runs. Exit status 0 only when everything passed.
#
# Environment:
#   WRENN_ENVD_BIN   the envd binary (default: <repo>/build/src/envd/wrenn-envd)
#   E2E_SDKS         space-separated aliases to run (default: "e2b-2.45 e2b-2.51")
#   E2E_FILES        test files to run, relative to tests/e2e (default: test/*.test.mjs)
#   E2E_RUN_TIMEOUT  seconds allowed for one node run before it is stopped (default: 600)
#   E2E_KEEP_LOG     if set, copy envd's log to this path before the temp dir is removed
#   E2E_CAPTURE      if set, put a logging proxy (lib/capture-proxy.mjs) on port 49983 in front of
#                    envd (then on 49984) and write every request/response exchange to this file
set -uo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/../.." && pwd)
bin=${WRENN_ENVD_BIN:-$root/build/src/envd/wrenn-envd}
port=49983
sdks=${E2E_SDKS:-"e2b-2.45 e2b-2.51"}
run_timeout=${E2E_RUN_TIMEOUT:-600}
# Paths given relative to the caller's directory, resolved before the cd below.
capture=${E2E_CAPTURE:+$(realpath -m "$E2E_CAPTURE")}
keep_log=${E2E_KEEP_LOG:+$(realpath -m "$E2E_KEEP_LOG")}
[[ $bin == /* ]] || bin=$(realpath -m "$bin")

die() {
    echo "e2e: error: $*" >&2
    exit 2
}

[[ -x $bin ]] || die "envd binary '$bin' not found or not executable (build with: ninja -C build, or set WRENN_ENVD_BIN)"
command -v node >/dev/null || die "node is not installed"
command -v npm >/dev/null || die "npm is not installed"

# Refuse to run against whatever already listens on the SDK's fixed debug port: the tests would
# silently exercise that server instead of ours.
port_busy() {
    local h
    if command -v ss >/dev/null; then
        [[ -n $(ss -Hltn "sport = :$port" 2>/dev/null) ]] && return 0
    fi
    for h in 127.0.0.1 ::1; do
        if (exec 3<>"/dev/tcp/$h/$port") 2>/dev/null; then
            return 0
        fi
    done
    return 1
}
if port_busy; then
    die "port $port is already in use (the e2b SDK's debug mode always talks to localhost:$port); stop the process listening there first (e.g. 'ss -ltnp sport = :$port')"
fi

# Install exactly the locked SDK versions, unless node_modules already holds them: `npm ci`
# wipes node_modules (breaking a concurrent run) and needs the registry. Concurrent runs
# serialize the install on a lock file.
cd "$here" || die "cannot enter $here"
exec 9>"${TMPDIR:-/tmp}/wrenn-e2e-npm.lock" || die "cannot open the install lock"
flock -w 600 9 || die "timed out waiting for another run's npm install"
if [[ -f package-lock.json ]]; then
    if ! node lib/deps-ok.cjs; then
        npm ci --prefer-offline --no-audit --no-fund --loglevel=error >/dev/null || die "npm ci failed"
    fi
else
    npm install --prefer-offline --no-audit --no-fund --loglevel=error >/dev/null || die "npm install failed"
fi
flock -u 9
exec 9>&-

work=$(mktemp -d /tmp/wrenn-e2e.XXXXXX) || die "mktemp failed"
# The tests run some commands as 'nobody', which must be able to reach the scratch tree.
chmod 0755 "$work"
mkdir -p "$work/fs"
chmod 0755 "$work/fs"
envd_pid=
proxy_pid=
envd_port=$port
[[ -n $capture ]] && envd_port=$((port + 1))
envd_log=

# Stop envd (SIGTERM, SIGKILL after 5 s) and then whatever it started that outlived it: envd
# puts each command in its own process group, so its direct children are group leaders.
stop_envd() {
    [[ -n $envd_pid ]] || return 0
    local kids k
    kids=$(ps -o pid= --ppid "$envd_pid" 2>/dev/null)
    if kill -0 "$envd_pid" 2>/dev/null; then
        kill -TERM "$envd_pid" 2>/dev/null
        for _ in $(seq 50); do
            kill -0 "$envd_pid" 2>/dev/null || break
            sleep 0.1
        done
        if kill -0 "$envd_pid" 2>/dev/null; then
            echo "# e2e: envd did not exit within 5 s of SIGTERM; killing it"
            kill -KILL "$envd_pid" 2>/dev/null
        fi
    fi
    wait "$envd_pid" 2>/dev/null
    for k in $kids; do
        kill -KILL -- "-$k" 2>/dev/null
        kill -KILL "$k" 2>/dev/null
    done
    envd_pid=
}

stop_proxy() {
    if [[ -n $proxy_pid ]] && kill -0 "$proxy_pid" 2>/dev/null; then
        kill -TERM "$proxy_pid" 2>/dev/null
        wait "$proxy_pid" 2>/dev/null
    fi
    proxy_pid=
}

cleanup() {
    local rc=$?
    stop_proxy
    stop_envd
    if [[ -n $keep_log ]]; then
        cat "$work"/envd-*.log >"$keep_log" 2>/dev/null
    fi
    rm -rf "$work"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# Start a fresh envd (and the capture proxy) for one SDK run: a daemon left broken by one run
# must not be blamed on the other SDK version.
start_envd() {
    local tag=$1 healthy=
    envd_log="$work/envd-$tag.log"
    rm -rf "$work/run-$tag"
    mkdir -p "$work/run-$tag"
    # envd treats every WRENN_ENVD_* variable as configuration and refuses unknown ones, so our
    # own WRENN_ENVD_BIN (and anything else of that prefix) must not reach it.
    local unset=() v
    for v in $(compgen -e); do
        [[ $v == WRENN_ENVD_* ]] && unset+=(-u "$v")
    done
    env "${unset[@]}" "$bin" --port "$envd_port" --run-dir "$work/run-$tag" \
        --log-level "${E2E_ENVD_LOG_LEVEL:-info}" >"$envd_log" 2>&1 &
    envd_pid=$!
    # Wait for /health on both loopback families (the SDK's "localhost" may be either).
    for _ in $(seq 100); do
        if ! kill -0 "$envd_pid" 2>/dev/null; then
            echo "e2e: envd exited during startup; its log:" >&2
            sed 's/^/    /' "$envd_log" >&2
            envd_pid=
            exit 2
        fi
        if curl -fsS -o /dev/null "http://127.0.0.1:$envd_port/health" 2>/dev/null; then
            healthy=1
            break
        fi
        sleep 0.1
    done
    [[ -n $healthy ]] || die "envd did not answer GET /health on port $envd_port within 10 s"
    if [[ -n $capture ]]; then
        echo "=== SDK run $tag" >>"$capture"
        node lib/capture-proxy.mjs "$port" "$envd_port" "$capture" &
        proxy_pid=$!
        for _ in $(seq 50); do
            curl -fsS -o /dev/null "http://127.0.0.1:$port/health" 2>/dev/null && break
            sleep 0.1
        done
        echo "# e2e: capturing envd traffic to $capture"
    fi
    curl -fsS -o /dev/null -g "http://[::1]:$port/health" 2>/dev/null ||
        echo "# e2e: warning: envd does not answer on [::1]:$port; 'localhost' may resolve to ::1" >&2
}

# Count passed and failed test cases in a TAP file when node did not print its summary (killed
# by the run timeout): every test point that is not a suite.
tally_tap() {
    awk '
        function flush() { if (have) { if (bad) f++; else p++ } have = 0 }
        /^ *(not )?ok [0-9]+/ { flush(); have = 1; bad = ($0 ~ /^ *not ok/) ; next }
        /type: .suite./ { have = 0; next }
        END { flush(); printf "%d %d\n", p, f }
    ' "$1"
}

[[ -n $capture ]] && { : >"$capture" || die "cannot write $capture"; }

if [[ -n ${E2E_FILES:-} ]]; then
    read -r -a files <<<"$E2E_FILES"
else
    files=(test/*.test.mjs)
fi

total_pass=0
total_fail=0
status=0
for sdk in $sdks; do
    [[ -d node_modules/$sdk ]] || die "SDK alias '$sdk' is not installed (see package.json)"
    ver=$(node -p "require('./node_modules/$sdk/package.json').version")
    start_envd "$sdk"
    echo "# e2e: SDK $sdk (e2b@$ver) against $bin"
    out="$work/tap-$sdk.txt"
    E2B_DEBUG=true E2E_SDK_PKG=$sdk E2E_TMP="$work/fs" E2E_ENVD_BIN="$bin" \
        timeout --kill-after=10 "$run_timeout" \
        node --test --test-reporter=tap "${files[@]}" 2>&1 | tee "$out"
    rc=${PIPESTATUS[0]}
    pass=$(grep -E '^# pass [0-9]+' "$out" | tail -1 | awk '{print $3}')
    fail=$(grep -E '^# fail [0-9]+' "$out" | tail -1 | awk '{print $3}')
    cancelled=$(grep -E '^# cancelled [0-9]+' "$out" | tail -1 | awk '{print $3}')
    if [[ -z $pass ]]; then
        # No summary: node was killed (run timeout) or crashed. Count what it reported, plus
        # one failure for the run itself.
        read -r pass fail < <(tally_tap "$out")
        echo "# e2e: node exited with status $rc for $sdk before its summary (run timeout ${run_timeout}s?)"
        echo "# pass $pass"
        echo "# fail $fail"
        fail=$((fail + 1))
    else
        fail=$((${fail:-0} + ${cancelled:-0}))
        if [[ $rc -ne 0 && $fail -eq 0 ]]; then
            echo "# e2e: node exited with status $rc for $sdk"
            fail=1
        fi
    fi
    if ! kill -0 "$envd_pid" 2>/dev/null; then
        echo "# e2e: envd died during the $sdk run; its log tail:"
        tail -n 40 "$envd_log" | sed 's/^/#    /'
        envd_pid=
        fail=$((fail + 1))
    fi
    stop_proxy
    stop_envd
    # A sanitizer build (CI runs the ASan+UBSan envd) reports memory errors and leaks on stderr.
    if grep -qE 'ERROR: (Address|Leak|Thread)Sanitizer|runtime error:' "$envd_log"; then
        echo "# e2e: envd's sanitizer reported errors during the $sdk run:"
        grep -E -A 12 'ERROR: (Address|Leak|Thread)Sanitizer|runtime error:' "$envd_log" | head -n 60 | sed 's/^/#    /'
        fail=$((fail + 1))
    fi
    echo "# e2e: $sdk: $pass passed, $fail failed"
    total_pass=$((total_pass + pass))
    total_fail=$((total_fail + fail))
    [[ $rc -ne 0 || $fail -ne 0 ]] && status=1
done

echo "e2e: $total_pass passed, $total_fail failed"
exit $status
