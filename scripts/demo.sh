#!/usr/bin/env bash
# The demo: build the built-in lab from the frontend/backend example, probe it, then apply the
# example's policies one stage at a time and probe again, so you see real connections being
# blocked and allowed. Everything happens in network namespaces the lab creates and removes.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
if [ "$(id -u)" -ne 0 ]; then
  echo "demo: the lab needs root (network namespaces, iptables, NFQUEUE); run it with sudo" >&2
  exit 1
fi

LAB=${LAB:-demo}
EXAMPLE=examples/frontend-backend
agent() { .venv/bin/netpol-agent "$@"; }
say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

agent lab down --lab "$LAB" >/dev/null 2>&1 || true
trap 'say "Tearing the lab down"; agent lab down --lab "$LAB"' EXIT

say "Building lab '$LAB' from $EXAMPLE/cluster.yaml (a node, 6 pods, an internet host; no policy yet)"
agent lab up --lab "$LAB" -f "$EXAMPLE/cluster.yaml"
agent lab get pods --lab "$LAB"

say "No NetworkPolicy: every pod reaches every pod that listens on TCP 80"
agent lab probe --lab "$LAB" --port 80 --protocol TCP --external

say "Stage 1: isolate the backend for ingress, with no rules ($EXAMPLE/policies.yaml)"
agent lab apply --lab "$LAB" -f "$EXAMPLE/policies.yaml"
agent lab probe --lab "$LAB" --port 80 --protocol TCP --external

say "Stage 2: let the frontend (and only the frontend) reach the backend on TCP 80"
agent lab apply --lab "$LAB" -f "$EXAMPLE/policies-2.yaml"
agent lab probe --lab "$LAB" --port 80 --protocol TCP --external

say "Stage 3: restrict the frontend's egress to the backend on TCP 80 plus cluster DNS"
agent lab apply --lab "$LAB" -f "$EXAMPLE/policies-3.yaml"
agent lab probe --lab "$LAB" --port 80 --protocol TCP --external
say "DNS still works from the frontend (UDP 53 to kube-dns), not from elsewhere it was never closed"
agent lab probe --lab "$LAB" --port 53 --protocol UDP

say "The same policy holds over IPv6"
agent lab probe --lab "$LAB" --port 80 --protocol TCP --family 6

say "What the agent decided (the first lines of its log)"
agent lab logs --lab "$LAB" --tail 12
