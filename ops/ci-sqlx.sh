#!/usr/bin/env bash
# CI: the committed offline query data (.sqlx/) of each ledger engine crate matches its
# queries and migrations: `cargo sqlx prepare --check` per crate, each against a scratch
# database made from that engine's migrations (SQLite: a temp file; PostgreSQL: a
# throwaway server, started as the postgres user when run as root).
# Needs sqlx-cli 0.8 (installed here when missing) and Debian's postgresql.
set -euo pipefail
cd "$(dirname "$0")/.."

readonly SQLX_CLI_VERSION=0.8.6
if ! cargo sqlx --version 2>/dev/null | grep -q "$SQLX_CLI_VERSION"; then
    echo "installing sqlx-cli $SQLX_CLI_VERSION"
    cargo install --quiet --locked sqlx-cli --version "$SQLX_CLI_VERSION" \
        --no-default-features --features sqlite,postgres,rustls
fi

scratch="$(mktemp -d)"
chmod 0755 "$scratch"
pg_bin="$(find /usr/lib/postgresql -maxdepth 2 -name bin -type d | sort -V | tail -n 1)"
as_postgres() {
    if [[ $EUID -eq 0 ]]; then runuser -u postgres -- "$@"; else "$@"; fi
}
cleanup() {
    if [[ -f "$scratch/pg/postmaster.pid" ]]; then
        as_postgres "$pg_bin/pg_ctl" stop -D "$scratch/pg" -m immediate -s || true
    fi
    rm -rf "$scratch"
}
trap cleanup EXIT

echo "== ledger-sqlite: cargo sqlx prepare --check"
export DATABASE_URL="sqlite://$scratch/dev.db"
cargo sqlx database create
cargo sqlx migrate run --source migrations
(cd ledger-sqlite && SQLX_OFFLINE=false cargo sqlx prepare --check)

echo "== ledger-postgres: cargo sqlx prepare --check"
[[ -n "$pg_bin" ]] || { echo "PostgreSQL is not installed" >&2; exit 1; }
[[ $EUID -ne 0 ]] || chown postgres: "$scratch"
as_postgres "$pg_bin/initdb" -D "$scratch/pg" -A trust -U postgres --no-sync >/dev/null
as_postgres "$pg_bin/pg_ctl" start -D "$scratch/pg" -w -s -l "$scratch/pg.log" \
    -o "-c listen_addresses='' -c unix_socket_directories='$scratch' -c fsync=off"
export DATABASE_URL="postgres://postgres@localhost/dev?host=$scratch"
cargo sqlx database create
cargo sqlx migrate run --source migrations/postgres
(cd ledger-postgres && SQLX_OFFLINE=false cargo sqlx prepare --check)
echo "offline query data up to date"
