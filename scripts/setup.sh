#!/usr/bin/env bash
# Installs everything netpol-agent needs on a Debian/Ubuntu machine, as root, idempotently:
# the kernel-facing tools from apt and a virtualenv at .venv/ with the package installed in it.
# It never touches the machine's network configuration; it only installs packages.
set -euo pipefail
cd "$(dirname "$0")/.."

# tests/test_setup.py reads this list: every program the code and tests run must come from one
# of these packages (or from one every Debian system has), so a fresh machine runs the suite.
APT_PACKAGES=(
  iptables iproute2 ipset conntrack       # the dataplane: rules, namespaces, address sets, flows
  iputils-ping                            # ICMP echo probes in the lab and dataplane tests
  libnetfilter-queue-dev libnfnetlink-dev # headers netfilterqueue compiles against
  gcc python3-dev python3-venv            # building netfilterqueue's C extension
  iperf3 wrk nginx-light procps           # load generators and a server for `netpol-agent bench`
)

missing=()
for pkg in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if [ "${#missing[@]}" -gt 0 ]; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "setup: these packages are missing and installing them needs root: ${missing[*]}" >&2
    exit 1
  fi
  echo "setup: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  # Install packages without starting their services (nginx would listen on the machine's own
  # port 80; the benchmark runs its own nginx inside a lab namespace): policy-rc.d answering 101
  # forbids invoke-rc.d to start anything (Debian policy 9.3.3).
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d
    chmod +x /usr/sbin/policy-rc.d
    trap 'rm -f /usr/sbin/policy-rc.d' EXIT
  fi
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

PYTHON="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
stamp=.venv/.installed-$(sha256sum pyproject.toml | cut -c1-16)
if [ ! -f "$stamp" ]; then
  .venv/bin/python -m pip install -q --upgrade pip
  .venv/bin/python -m pip install -q -e '.[test,bench]'
  rm -f .venv/.installed-*
  touch "$stamp"
fi
