#!/usr/bin/env bash
# Installs the Debian packages the tests and the demo use when they are missing:
# sipp (sip-tester), baresip (baresip-core), chromium (the dashboard test drives it headless
# through Playwright), espeak-ng (cXML <Say>, docs/voice.md), PostgreSQL's initdb/pg_ctl, and for
# cluster mode (docs/cluster.md) redis-server, kamailio and its ndb_redis module
# (kamailio-redis-modules); with --bench also
# Janus (the AudioBridge peer the benchmark runs side by side) and valgrind (bench/icount.py:
# instruction counts of the hot paths under callgrind).
set -euo pipefail
need=()
if [ "${1:-}" = "--bench" ]; then
  command -v janus >/dev/null 2>&1 || need+=(janus)
  command -v valgrind >/dev/null 2>&1 || need+=(valgrind)
fi
command -v sipp >/dev/null 2>&1 || need+=(sip-tester)
command -v baresip >/dev/null 2>&1 || need+=(baresip-core)
command -v chromium >/dev/null 2>&1 || need+=(chromium)
command -v espeak-ng >/dev/null 2>&1 || need+=(espeak-ng)
if ! command -v initdb >/dev/null 2>&1 && ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then
  need+=(postgresql)
fi
command -v redis-server >/dev/null 2>&1 || need+=(redis-server)
command -v kamailio >/dev/null 2>&1 || need+=(kamailio)
if ! ls /usr/lib/*/kamailio/modules/ndb_redis.so >/dev/null 2>&1; then
  need+=(kamailio-redis-modules)
fi
[ ${#need[@]} -eq 0 ] && exit 0
echo "installing system packages: ${need[*]}"
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  command -v sudo >/dev/null 2>&1 || { echo "need root (or sudo) to apt-get install ${need[*]}" >&2; exit 1; }
  SUDO="sudo"
fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -q >/dev/null || true
$SUDO apt-get install -y -q --no-install-recommends "${need[@]}" >/dev/null
