#!/usr/bin/env bash
# The whole test suite, on SQLite and on Postgres, from a fresh machine:
# starts Postgres if none answers on 127.0.0.1:5432, installs nginx (for the
# auth_request end-to-end test) if missing, builds, and runs every test
# twice, once per store.
#
#   TESSERA_TEST_DATABASE_URL  Postgres to test against
#                              (default postgres://postgres@127.0.0.1:5432/test)
#   TESSERA_TEST_MOTO_URL      moto (AWS emulator) to test against (default: one
#                              started by scripts/moto.sh on a free port, stopped
#                              at exit)
#   CARGO_TARGET_DIR           build directory (default /var/tmp/tessera-target,
#                              shared between clones so rebuilds stay warm)
set -euo pipefail
cd "$(dirname "$0")/.."

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/tmp/tessera-target}"
export TESSERA_TEST_DATABASE_URL="${TESSERA_TEST_DATABASE_URL:-postgres://postgres@127.0.0.1:5432/test}"

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

apt_install() {
  as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

step() { printf '\n== %s\n' "$*"; }

step "Postgres"
if ! pg_isready -q -h 127.0.0.1 -p 5432 2>/dev/null; then
  if ! ls /etc/postgresql/*/main >/dev/null 2>&1; then
    apt_install postgresql
  fi
  as_root pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -n1)" main start || true
  for _ in $(seq 1 30); do pg_isready -q -h 127.0.0.1 -p 5432 && break; sleep 1; done
fi
pg_isready -h 127.0.0.1 -p 5432
db="${TESSERA_TEST_DATABASE_URL##*/}"
if ! psql "$TESSERA_TEST_DATABASE_URL" -qAtc 'select 1' >/dev/null 2>&1; then
  psql "${TESSERA_TEST_DATABASE_URL%/*}/postgres" -qc "CREATE DATABASE \"$db\"" || true
fi

# Each test makes its own schema (t_<uuid>); drop those earlier runs left.
psql "$TESSERA_TEST_DATABASE_URL" -qAtc "SELECT format('DROP SCHEMA %I CASCADE;', nspname) FROM pg_namespace WHERE nspname LIKE 't\\_%'" \
  | psql "$TESSERA_TEST_DATABASE_URL" -q >/dev/null 2>&1 || true

step "nginx"
if ! command -v nginx >/dev/null 2>&1 && [ ! -x /usr/sbin/nginx ]; then
  apt_install nginx
fi
export TESSERA_TEST_NGINX="${TESSERA_TEST_NGINX:-$(command -v nginx || echo /usr/sbin/nginx)}"

step "moto"
# Local AWS emulator for the AWS tests (tests/it/aws.rs). Unless one is
# given, this run starts its own on a free port (so concurrent runs do not
# reset each other's) and stops it at exit.
if [ -z "${TESSERA_TEST_MOTO_URL:-}" ]; then
  port="$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
  export TESSERA_TEST_MOTO_URL="http://127.0.0.1:$port"
  trap 'scripts/moto.sh stop' EXIT
fi
scripts/moto.sh >/dev/null
echo "moto at $TESSERA_TEST_MOTO_URL"

step "build"
cargo build --locked --all-targets

step "tests on SQLite"
TESSERA_TEST_STORE=sqlite cargo test --locked -- --test-threads 4

step "tests on Postgres"
TESSERA_TEST_STORE=postgres cargo test --locked --test it -- --test-threads 4
