#!/usr/bin/env bash
# Load benchmark: runs benches/load.rs against the release `tessera` binary
# on SQLite and, when a Postgres is reachable on 127.0.0.1:5432, on Postgres
# (in a fresh schema that is dropped afterwards). Results are printed and
# written to benches/results/<store>.md. See benches/README.md.
#
#   benches/run.sh                      # both stores, 5 s per scenario, 32 connections
#   BENCH_SECONDS=10 BENCH_CONCURRENCY=64 benches/run.sh
#   BENCH_STORES=sqlite benches/run.sh  # one store only
#   benches/run.sh --no-write           # extra arguments go to the bench
#   benches/run.sh --only credentials   # only the AWS credential rows (moto)
#   benches/run.sh --only standard      # everything but those
set -euo pipefail
cd "$(dirname "$0")/.."

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/tmp/tessera-target}"
seconds="${BENCH_SECONDS:-5}"
concurrency="${BENCH_CONCURRENCY:-32}"
stores="${BENCH_STORES:-sqlite postgres}"
pg_url="${BENCH_PG_URL:-postgres://postgres@127.0.0.1:5432/test}"

pg_ready() {
    if command -v pg_isready >/dev/null; then
        pg_isready -q -h 127.0.0.1 -p 5432
    else
        (exec 3<>/dev/tcp/127.0.0.1/5432) 2>/dev/null
    fi
}

# Makes Postgres reachable if it is installed but stopped; returns 1 if not.
ensure_postgres() {
    pg_ready && return 0
    if command -v pg_ctlcluster >/dev/null && [ -d /etc/postgresql ]; then
        local version
        version="$(ls /etc/postgresql | sort -V | tail -n 1)"
        echo "run.sh: starting Postgres $version" >&2
        pg_ctlcluster --skip-systemctl-redirect "$version" main start >&2 || true
        for _ in $(seq 1 40); do
            pg_ready && break
            sleep 0.5
        done
    fi
    pg_ready || return 1
    if command -v psql >/dev/null && [ "$pg_url" = "postgres://postgres@127.0.0.1:5432/test" ]; then
        if ! psql -h 127.0.0.1 -U postgres -d postgres -Atc \
            "SELECT 1 FROM pg_database WHERE datname = 'test'" | grep -q 1; then
            psql -h 127.0.0.1 -U postgres -d postgres -c "CREATE DATABASE test" >&2
        fi
    fi
}

run_stores=()
for store in $stores; do
    case "$store" in
        sqlite) run_stores+=(sqlite) ;;
        postgres)
            if ensure_postgres; then
                run_stores+=(postgres)
            else
                echo "run.sh: Postgres is not reachable on 127.0.0.1:5432; skipping the Postgres run" >&2
            fi
            ;;
        *)
            echo "run.sh: unknown store $store (expected sqlite or postgres)" >&2
            exit 2
            ;;
    esac
done
if [ "${#run_stores[@]}" -eq 0 ]; then
    echo "run.sh: no store to run" >&2
    exit 1
fi

# The AWS credential rows need moto (local AWS emulator): reuse the one
# answering at TESSERA_TEST_MOTO_URL (default http://127.0.0.1:5005), or
# start one with scripts/moto.sh and stop it afterwards. Skipped with
# `--only standard`; without moto the bench leaves those rows out.
want_moto=1
prev=""
for a in "$@"; do
    if [ "$prev" = "--only" ] && [ "$a" = standard ]; then want_moto=0; fi
    prev="$a"
done
moto_args=()
started_moto=0
if [ "$want_moto" = 1 ]; then
    moto_url="${TESSERA_TEST_MOTO_URL:-http://127.0.0.1:5005}"
    moto_url="${moto_url%/}"
    if curl -fsS -m 2 -o /dev/null "$moto_url/moto-api/" 2>/dev/null; then
        echo "run.sh: using moto already running at $moto_url" >&2
    elif moto_url="$(TESSERA_TEST_MOTO_URL="$moto_url" scripts/moto.sh)"; then
        started_moto=1
        echo "run.sh: started moto at $moto_url" >&2
    else
        echo "run.sh: could not start moto; the AWS credential rows are left out" >&2
        moto_url=""
    fi
    if [ -n "$moto_url" ]; then moto_args=(--moto-url "$moto_url"); fi
fi
stop_moto() {
    if [ "$started_moto" = 1 ]; then
        TESSERA_TEST_MOTO_URL="$moto_url" scripts/moto.sh stop || true
    fi
}
trap stop_moto EXIT

# One cargo invocation (release build, then the run) for every store, so
# that all stores measure the same build even if the tree changes meanwhile.
store_list="$(IFS=,; echo "${run_stores[*]}")"
cargo bench --bench load -- --store "$store_list" --pg-url "$pg_url" \
    --seconds "$seconds" --concurrency "$concurrency" "${moto_args[@]}" "$@"
