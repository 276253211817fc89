#!/usr/bin/env bash
# Set up .venv with everything the project, its tests and the embedded Triton server need.
# Idempotent and quick when nothing changed. Usage: scripts/setup.sh   (PYTHON=python3.11 to choose)
set -euo pipefail
cd "$(dirname "$0")/.."

# perf_analyzer (bundled in tritonclient[all]) links libb64 from the system.
if ! ldconfig -p 2>/dev/null | grep -q 'libb64.so.0d'; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        echo "setup: installing libb64-0d (for perf_analyzer)"
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq libb64-0d >/dev/null
    else
        echo "setup: warning: libb64.so.0d is missing; perf_analyzer will not run (apt-get install libb64-0d)" >&2
    fi
fi

# nginx routes between replica servers (`compiler serve --replicas`); the distribution's service must not start with it
# (the project starts its own nginx, on its own ports), so a policy-rc.d refuses service starts during the install.
if ! command -v nginx >/dev/null && [ ! -x /usr/sbin/nginx ]; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        echo "setup: installing nginx-light (the proxy in front of replicas)"
        policy=/usr/sbin/policy-rc.d
        if [ ! -e "$policy" ]; then
            printf '#!/bin/sh\nexit 101\n' > "$policy" && chmod +x "$policy"
            trap 'rm -f /usr/sbin/policy-rc.d' EXIT
        fi
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nginx-light >/dev/null
    else
        echo "setup: warning: nginx is missing; \`serve --replicas\` and its tests need it (apt-get install nginx-light)" >&2
    fi
fi

stamp=.venv/.stca-setup
want=$(cat pyproject.toml requirements/constraints.txt scripts/setup.sh | sha256sum | cut -c1-16)
if [ -x .venv/bin/python ] && [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
    exit 0
fi
"${PYTHON:-python3}" -m venv .venv
.venv/bin/pip install -q --disable-pip-version-check -c requirements/constraints.txt -e ".[test]"
# The tritonserver binary ships inside this wheel; its own Python deps pin numpy<2 and are not needed.
.venv/bin/pip install -q --disable-pip-version-check --no-deps nvidia-pytriton==0.7.0
echo "$want" > "$stamp"
echo "setup: .venv ready ($(.venv/bin/python -c 'import torch, onnxruntime; print("torch", torch.__version__, "onnxruntime", onnxruntime.__version__)'))"
