#!/usr/bin/env bash
# The whole test suite: set-up, lint, type check, unit tests, and (as root) the end-to-end tests
# in network namespaces. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh

if [ "$(id -u)" -ne 0 ]; then
  echo "test: not root, so the end-to-end tests (real namespaces, iptables, NFQUEUE) are skipped" >&2
fi

root_rules_before=$(iptables-save 2>/dev/null | grep -v '^#' || true)
namespaces_before=$(ip netns list 2>/dev/null | awk '{print $1}' | sort || true)

.venv/bin/ruff check agent enforcement tests
.venv/bin/ruff format --check agent enforcement tests
.venv/bin/mypy
status=0
.venv/bin/python -m pytest "$@" || status=$?

# The machine's own network must be untouched, and every lab namespace removed.
root_rules_after=$(iptables-save 2>/dev/null | grep -v '^#' || true)
if [ "$root_rules_before" != "$root_rules_after" ]; then
  echo "test: FAILED: the root network namespace's firewall changed during the tests" >&2
  status=1
fi
# Only namespaces that appeared during this run count: the tests' own leftovers.
namespaces_after=$(ip netns list 2>/dev/null | awk '{print $1}' | sort || true)
leftover=$(comm -13 <(echo "$namespaces_before") <(echo "$namespaces_after") | grep -E '^(npa|npt)-' || true)
if [ -n "$leftover" ]; then
  echo "test: FAILED: network namespaces left behind: $leftover" >&2
  status=1
fi
exit $status
