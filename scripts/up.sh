#!/usr/bin/env bash
# Bring up a single-node Wrenn from this checkout and print how to use it: the control plane on
# its embedded SQLite database, one host agent, and the `minimal` guest image. State lives in
# .wrenn/ (override with WRENN_STATE); `make down` stops it. Needs root (the agent runs VMs).
set -euo pipefail
cd "$(dirname "$0")/.."
top=$PWD
state=${WRENN_STATE:-$top/.wrenn}
cp_port=${WRENN_UP_CP_PORT:-8080}
agent_port=${WRENN_UP_AGENT_PORT:-50051}

if [ "$(id -u)" != 0 ]; then
  echo "make up: run as root (the host agent creates VMs, network namespaces and cgroups)" >&2
  exit 1
fi
bash scripts/deps.sh
[ -f build/build.ninja ] || meson setup build >/dev/null
ninja -C build >/dev/null
mkdir -p "$state/cp" "$state/agent"

alive() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }
wait_port() { # host port what
  for _ in $(seq 100); do
    if (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null; then return 0; fi
    sleep 0.1
  done
  echo "make up: $3 did not start; see its log in $state" >&2
  exit 1
}

echo "up: guest image 'minimal' (kernel and image are cached after the first build)"
WRENN_ENVD_BIN=$top/build/src/envd/wrenn-envd \
  build/src/agent/wrenn-agent --root "$state/agent" image build minimal

if alive "$state/agent.pid"; then
  echo "up: wrenn-agent already running (pid $(cat "$state/agent.pid"))"
else
  nohup build/src/agent/wrenn-agent --root "$state/agent" --listen "127.0.0.1:$agent_port" \
    >"$state/agent.log" 2>&1 &
  echo $! >"$state/agent.pid"
fi
if alive "$state/cp.pid"; then
  echo "up: wrenn-cp already running (pid $(cat "$state/cp.pid"))"
else
  nohup build/src/cp/wrenn-cp --addr 127.0.0.1 --port "$cp_port" --data-dir "$state/cp" \
    >"$state/cp.log" 2>&1 &
  echo $! >"$state/cp.pid"
fi
wait_port 127.0.0.1 "$agent_port" wrenn-agent
wait_port 127.0.0.1 "$cp_port" wrenn-cp

cat <<EOT

Wrenn is up (state in $state; stop it with: make down)

Control plane  http://127.0.0.1:$cp_port   API docs: http://127.0.0.1:$cp_port/docs
  curl -s -X POST 127.0.0.1:$cp_port/v1/auth/signup -H 'Content-Type: application/json' \\
       -d '{"email":"you@example.test","password":"a-long-password"}'      # → a JWT
  curl -s -X POST 127.0.0.1:$cp_port/v1/api-keys -H "Authorization: Bearer \$JWT" \\
       -H 'Content-Type: application/json' -d '{"name":"laptop"}'         # → an e2b_… key

Host agent     http://127.0.0.1:$agent_port  (Connect RPC; secret in $state/agent/agent.secret)
  S=\$(cat $state/agent/agent.secret); A=http://127.0.0.1:$agent_port/hostagent.v1.HostAgentService
  curl -s \$A/CreateSandbox -H "Authorization: Bearer \$S" -H 'Content-Type: application/json' \\
       -d '{"template":"minimal","timeoutSec":600}'                      # → sandboxId, hostIp
  curl -s \$A/Exec -H "Authorization: Bearer \$S" -H 'Content-Type: application/json' \\
       -d '{"sandboxId":"<id>","cmd":"uname","args":["-a"]}'              # stdout is base64
  More templates: build/src/agent/wrenn-agent --root $state/agent image build base

The control plane does not schedule sandboxes onto the agent yet (a later milestone); until then
use the agent's RPC directly as above.
EOT
