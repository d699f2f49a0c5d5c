#!/usr/bin/env bash
# Starts a local AWS emulator (moto server) for the AWS tests and prints its
# URL on stdout (the only thing printed there; progress goes to stderr).
#
#   scripts/moto.sh          install if needed, start if not answering, print URL
#   scripts/moto.sh stop     stop the server this script started (by its pid file)
#
#   TESSERA_TEST_MOTO_URL    reuse the emulator answering there; when it does
#                            not answer, one is started on its port
#                            (default http://127.0.0.1:5005)
#   TESSERA_MOTO_VENV        virtualenv to install moto into (default
#                            ${XDG_CACHE_HOME:-$HOME/.cache}/tessera-moto-venv;
#                            reused when it already has the pinned version)
#   TESSERA_MOTO_STATE       where the pid and log files go
#                            (default ${CARGO_TARGET_DIR:-/var/tmp/tessera-target}/moto)
#
# moto has a known bug in its Lake Formation permission catalog (HTTP 500 on
# some revokes); scripts/moto-lakeformation.patch.py fixes it in the installed
# copy and refuses to run if the code it patches has changed.
set -euo pipefail

MOTO_VERSION=5.2.5
here="$(cd "$(dirname "$0")" && pwd)"
venv="${TESSERA_MOTO_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/tessera-moto-venv}"
state="${TESSERA_MOTO_STATE:-${CARGO_TARGET_DIR:-/var/tmp/tessera-target}/moto}"
url="${TESSERA_TEST_MOTO_URL:-http://127.0.0.1:5005}"
url="${url%/}"
hostport="${url#*://}"
host="${hostport%:*}"
port="${hostport##*:}"
pidfile="$state/moto-$port.pid"
logfile="$state/moto-$port.log"

log() { printf 'moto.sh: %s\n' "$*" >&2; }

answering() { curl -fsS -m 2 -o /dev/null "$url/moto-api/" 2>/dev/null; }

if [ "${1:-}" = stop ]; then
  if [ -f "$pidfile" ]; then
    pid="$(cat "$pidfile")"
    # Only if that pid is still our moto_server (pids get reused).
    if tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -q moto_server; then
      kill "$pid" 2>/dev/null || true
      log "stopped moto on port $port (pid $pid)"
    fi
    rm -f "$pidfile"
  fi
  exit 0
fi

if answering; then
  log "moto already answering at $url"
  echo "$url"
  exit 0
fi

# Install (or reuse) the pinned moto. The marker is written only after the
# install and the patch both succeeded, so a half-made venv is redone.
# The patch script's hash is in the marker too, so a changed patch is
# applied to a fresh install. flock: concurrent runs install once.
patch="$here/moto-lakeformation.patch.py"
marker="$venv/.tessera-moto-$MOTO_VERSION-$(sha256sum "$patch" | cut -c1-12)"
mkdir -p "$(dirname "$venv")"
exec 9>"$venv.lock"
flock 9
if [ ! -f "$marker" ]; then
  log "installing moto[server]==$MOTO_VERSION into $venv"
  rm -rf "$venv"
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q --disable-pip-version-check "moto[server]==$MOTO_VERSION" >&2
  "$venv/bin/python" "$patch" >&2
  touch "$marker"
fi
flock -u 9

mkdir -p "$state"
log "starting moto on $host:$port (log: $logfile)"
# setsid: own process group, so the caller's job control and signals to its
# group do not reach it; stopped by `moto.sh stop` via the pid file.
# Its request recorder writes to MOTO_RECORDER_FILEPATH (the tests read it
# back through /moto-api/recorder/download-recording).
MOTO_RECORDER_FILEPATH="$state/moto-$port.recording" \
  setsid "$venv/bin/moto_server" -H "$host" -p "$port" >"$logfile" 2>&1 </dev/null 9>&- &
echo $! >"$pidfile"
for _ in $(seq 1 60); do
  if answering; then
    echo "$url"
    exit 0
  fi
  if ! kill -0 "$(cat "$pidfile")" 2>/dev/null; then
    log "moto exited; its log:"
    cat "$logfile" >&2
    exit 1
  fi
  sleep 0.5
done
log "moto did not answer on $url within 30s; its log:"
cat "$logfile" >&2
exit 1
