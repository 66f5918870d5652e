#!/usr/bin/env bash
# Install what the test suite needs on a Debian machine (real servers and grid clients), then run it.
# Usage: bash tests/run.sh [pytest args]    (as root, or with sudo available)
set -euo pipefail
cd "$(dirname "$0")/.."

SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
PKGS="memcached apache2 nginx-light wrk curl openssl davix gfal2 gfal2-util-scripts gfal2-plugin-http gfal2-plugin-file
      python3-gfal2 python-is-python3 aria2 rclone fuse3 voms-clients ceph-mon ceph-osd radosgw ceph-common iproute2 python3-venv python3-pip chromium rpm rpmlint activemq
      haproxy"
missing=""
for p in $PKGS; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
done
command -v npm >/dev/null || missing="$missing nodejs npm"
if [ -n "$missing" ]; then
  $SUDO apt-get update -q
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q --no-install-recommends $missing
fi
# Debian starts packaged daemons on install; the tests start their own on free ports.
for svc in memcached apache2 nginx haproxy; do $SUDO service "$svc" stop >/dev/null 2>&1 || true; done
# RabbitMQ's STOMP plugin for tests/test_events_stomp.py (idempotent; its listener on loopback only)
$SUDO rabbitmqctl eval 'application:set_env(rabbitmq_stomp, tcp_listeners, [{"127.0.0.1", 61613}]).' >/dev/null
$SUDO rabbitmq-plugins enable rabbitmq_stomp >/dev/null

PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
.venv/bin/pip install -q --upgrade pip >/dev/null
.venv/bin/pip install -q '.[test]'
# Azurite (Azure Blob emulator) and playwright-core (drives Debian's chromium), pinned by package-lock.json
[ -x tests/node/node_modules/.bin/azurite-blob ] && [ -d tests/node/node_modules/playwright-core ] ||
  (cd tests/node && npm ci --no-audit --no-fund --loglevel=error)
.venv/bin/ruff check fedd tests benchmarks twisted
.venv/bin/ruff format --check --quiet fedd tests benchmarks twisted
.venv/bin/mypy
exec .venv/bin/python -m pytest -p no:cacheprovider "$@"
