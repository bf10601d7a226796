#!/usr/bin/env bash
# The scale-out demo (SPEC §11): PostgreSQL, three masters and two slaves, each on its
# own "host", on one machine, as root.
#
#   ops/demo/scale-out.sh up           start the cluster
#   ops/demo/scale-out.sh walkthrough  run the seed demo across the masters, killing one
#   ops/demo/scale-out.sh status       show processes, masters, slaves, task counts
#   ops/demo/scale-out.sh down         stop everything (idempotent)
#
# Each host is a network namespace with one interface, eth0, on 10.204.0.0/24; the
# cables meet at a bridge in a seventh namespace, so-lan (as in three-hosts.sh, nothing
# is added to the host's own network):
#
#   so-db       10.204.0.5   PostgreSQL (a throwaway cluster; role and database "cluster",
#                             password authentication)
#   so-master1  10.204.0.11  master serve --db postgres://cluster:***@10.204.0.5/cluster
#   so-master2  10.204.0.12  the same
#   so-master3  10.204.0.13  the same
#   so-slave1   10.204.0.21  slave --master <all three> --name slave-1 --capacity 1
#   so-slave2   10.204.0.22  slave --master <all three> --name slave-2 --capacity 1
#
# The masters and slaves share a CLUSTER_TOKEN (the caller's, else a random one); the
# database password is random too. Both travel in the environment, never on a command
# line. The walkthrough submits the seed's two tasks through master 1 and master 2,
# kills master 1 with SIGKILL while both run, hears "full capacity" from master 3, and
# reads both results through the masters that are left.
#
# Environment: BIN_DIR (default target/release, built when missing), RUST_LOG (info),
# SO_RUN_DIR (/run/so-demo: pids, secrets and the log directory's name).
set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
readonly REPO_ROOT
readonly RUN_DIR="${SO_RUN_DIR:-/run/so-demo}"

readonly NS_LAN=so-lan BRIDGE=so-br0 NS_DB=so-db
readonly MASTERS=(so-master1 so-master2 so-master3) SLAVES=(so-slave1 so-slave2)
readonly ALL_NAMESPACES=("$NS_DB" "${MASTERS[@]}" "${SLAVES[@]}" "$NS_LAN")
readonly DB_IP=10.204.0.5 MASTER_IPS=(10.204.0.11 10.204.0.12 10.204.0.13)
readonly SLAVE_IPS=(10.204.0.21 10.204.0.22)
readonly MASTER_PORT=8080 SLAVE_PORT=9000 DB_PORT=5432

readonly START_TIMEOUT=30  # s for a process to listen / register / be seen everywhere
readonly STOP_TIMEOUT=10   # s after SIGTERM before SIGKILL
readonly WALK_BUDGET=60    # s for the whole walkthrough
readonly CURL_MAX_TIME=15  # s for one request (long polls ask for 10 s)
readonly TASK_DELAY_MS=4000

say() { printf '%s\n' "$*"; }
section() { printf '\n== %s\n' "$*"; }
die() {
    printf 'scale-out: %s\n' "$*" >&2
    exit 1
}
usage() {
    sed -n '2,7p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
    exit 2
}
require_root() { [[ $EUID -eq 0 ]] || die "needs root (network namespaces): run it with sudo"; }
require_tools() {
    local tool missing=()
    for tool in "$@"; do command -v "$tool" >/dev/null || missing+=("$tool"); done
    [[ ${#missing[@]} -eq 0 ]] || die "missing tools: ${missing[*]} (Debian: apt-get install -y iproute2 curl jq)"
}
namespace_exists() { [[ -e "/run/netns/$1" ]]; }
log_dir() { [[ -f "$RUN_DIR/log-dir" ]] && cat "$RUN_DIR/log-dir"; }
master_url() { printf 'http://%s:%s' "${MASTER_IPS[$1]}" "$MASTER_PORT"; }
all_master_urls() { printf '%s,%s,%s' "$(master_url 0)" "$(master_url 1)" "$(master_url 2)"; }

locate_binaries() {
    local bin_dir="${BIN_DIR:-$REPO_ROOT/target/release}"
    if [[ ! -x "$bin_dir/master" || ! -x "$bin_dir/slave" ]]; then
        [[ -z "${BIN_DIR:-}" ]] || die "BIN_DIR=$BIN_DIR has no executable master and slave"
        section "building release binaries"
        (cd "$REPO_ROOT" && SQLX_OFFLINE=true cargo build --release -p master -p slave)
    fi
    MASTER_BIN="$(cd "$bin_dir" && pwd)/master"
    SLAVE_BIN="$(cd "$bin_dir" && pwd)/slave"
}

locate_postgres() {
    PG_BIN="$(compgen -G '/usr/lib/postgresql/*/bin' | sort -V | tail -n 1)" ||
        die "no PostgreSQL server (Debian: apt-get install -y postgresql)"
    id postgres >/dev/null 2>&1 || die "no postgres user (Debian's postgresql package makes it)"
}

# ----------------------------------------------------------------------------- network

plug_in() {
    local ns="$1" ip="$2"
    ip netns add "$ns"
    ip -n "$ns" link set lo up
    ip -n "$NS_LAN" link add "$ns" type veth peer name eth0 netns "$ns"
    ip -n "$NS_LAN" link set "$ns" master "$BRIDGE" up
    ip -n "$ns" addr add "$ip/24" dev eth0
    ip -n "$ns" link set eth0 up
}

network_up() {
    section "network: ${ALL_NAMESPACES[*]} on 10.204.0.0/24"
    ip netns add "$NS_LAN"
    ip -n "$NS_LAN" link set lo up
    ip -n "$NS_LAN" link add "$BRIDGE" type bridge
    ip -n "$NS_LAN" link set "$BRIDGE" up
    plug_in "$NS_DB" "$DB_IP"
    local i
    for i in 0 1 2; do plug_in "${MASTERS[$i]}" "${MASTER_IPS[$i]}"; done
    for i in 0 1; do plug_in "${SLAVES[$i]}" "${SLAVE_IPS[$i]}"; done
}

# ---------------------------------------------------------------------------- processes

# start_process NAME NAMESPACE ENV... -- COMMAND...: in the background, clean
# environment plus ENV, output in $LOG_DIR/NAME.log.
start_process() {
    local name="$1" ns="$2" envs=()
    shift 2
    while [[ "$1" != -- ]]; do envs+=("$1"); shift; done
    shift
    say "starting $name in $ns: $*"
    ip netns exec "$ns" env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin NO_COLOR=1 \
        RUST_LOG="${RUST_LOG:-info}" CLUSTER_TOKEN="$TOKEN" "${envs[@]}" "$@" \
        >"$LOG_DIR/$name.log" 2>&1 </dev/null &
    echo $! >"$RUN_DIR/$name.pid"
    disown # its death (master 1's, on purpose) is not news for this shell to print
}

is_running() {
    local pid
    pid="$(cat "$RUN_DIR/$1.pid" 2>/dev/null)" || return 1
    kill -0 "$pid" 2>/dev/null
}

wait_until() {
    local seconds="$1" what="$2"
    shift 2
    local deadline=$((SECONDS + seconds))
    until "$@"; do
        if [[ -n "${PROCESS:-}" ]] && ! is_running "$PROCESS"; then
            die "$PROCESS exited while waiting for: $what (log: $LOG_DIR/$PROCESS.log)"
        fi
        ((SECONDS < deadline)) || die "gave up after ${seconds}s waiting for: $what"
        sleep 0.1
    done
}

# api INDEX METHOD PATH [JSON]: one request to master INDEX, from its own namespace.
api() {
    local index="$1" method="$2" path="$3" body="${4:-}" out
    local args=(--noproxy '*' --silent --show-error --max-time "$CURL_MAX_TIME" --request "$method"
        --write-out '\n%{http_code}')
    [[ -z "$body" ]] || args+=(--header 'content-type: application/json' --data "$body")
    HTTP_REQUEST="master $((index + 1)): $method $path${body:+ $body}"
    out="$(ip netns exec "${MASTERS[$index]}" curl "${args[@]}" "$(master_url "$index")$path")" || return 1
    HTTP_STATUS="${out##*$'\n'}"
    HTTP_BODY="${out%$'\n'*}"
}
show() { say "> $HTTP_REQUEST"; say "< HTTP $HTTP_STATUS $HTTP_BODY"; }
expect() {
    local what="$1" status="$2" filter="$3"
    if [[ "$HTTP_STATUS" != "$status" ]] || ! jq -e "$filter" <<<"$HTTP_BODY" >/dev/null 2>&1; then
        die "expected $what (HTTP $status); got HTTP $HTTP_STATUS $HTTP_BODY"
    fi
    say "  ok: $what"
}

healthy() { api "$1" GET /healthz 2>/dev/null && [[ "$HTTP_STATUS" == 200 ]]; }
slave_up_on() {
    api "$1" GET /slaves 2>/dev/null && [[ "$HTTP_STATUS" == 200 ]] &&
        jq -e --arg name "$2" 'any(.slaves[]; .name == $name and .state == "up")' <<<"$HTTP_BODY" >/dev/null
}
postgres_ready() { ip netns exec "$NS_DB" runuser -u postgres -- "$PG_BIN/pg_isready" -q -h "$DB_IP" -p "$DB_PORT"; }

postgres_up() {
    section "PostgreSQL on $DB_IP:$DB_PORT"
    local data="$LOG_DIR/pgdata" socket="$LOG_DIR/pgsocket"
    install -d -o postgres -m 0700 "$data" "$socket"
    chown postgres "$LOG_DIR"
    runuser -u postgres -- "$PG_BIN/initdb" -D "$data" -U postgres --auth-local=trust \
        --auth-host=scram-sha-256 >"$LOG_DIR/initdb.log"
    printf 'host cluster cluster 10.204.0.0/24 scram-sha-256\n' >>"$data/pg_hba.conf"
    ip netns exec "$NS_DB" runuser -u postgres -- "$PG_BIN/pg_ctl" -D "$data" -l "$LOG_DIR/postgres.log" \
        -o "-c listen_addresses=$DB_IP -p $DB_PORT -k $socket" start >/dev/null
    wait_until "$START_TIMEOUT" "PostgreSQL accepts connections" postgres_ready
    ip netns exec "$NS_DB" runuser -u postgres -- "$PG_BIN/psql" -q -h "$socket" -p "$DB_PORT" -U postgres \
        -v password="$DB_PASSWORD" <<'SQL'
CREATE ROLE cluster LOGIN PASSWORD :'password';
CREATE DATABASE cluster OWNER cluster;
SQL
    echo "$data" >"$RUN_DIR/pgdata"
    say "database cluster, role cluster (password in $RUN_DIR/db-password)"
}

cmd_up() {
    require_root
    require_tools ip curl jq runuser
    if [[ -d "$RUN_DIR" ]] || namespace_exists "$NS_LAN"; then die "already (partly) up: run '$0 down' first"; fi
    locate_binaries
    locate_postgres
    mkdir -p "$RUN_DIR" && chmod 0700 "$RUN_DIR"
    LOG_DIR="$(mktemp -d "${TMPDIR:-/tmp}/so-demo.XXXXXX")"
    chmod 0755 "$LOG_DIR"
    echo "$LOG_DIR" >"$RUN_DIR/log-dir"
    TOKEN="${CLUSTER_TOKEN:-$(od -An -N16 -tx1 /dev/urandom | tr -d ' \n')}"
    DB_PASSWORD="$(od -An -N16 -tx1 /dev/urandom | tr -d ' \n')"
    (umask 077 && printf '%s\n' "$TOKEN" >"$RUN_DIR/token" && printf '%s\n' "$DB_PASSWORD" >"$RUN_DIR/db-password")
    trap 'on_failure up' EXIT

    network_up
    postgres_up
    local db="postgres://cluster:$DB_PASSWORD@$DB_IP:$DB_PORT/cluster" i
    section "three masters on one database, started together"
    for i in 0 1 2; do
        start_process "master$((i + 1))" "${MASTERS[$i]}" MASTER_DB="$db" -- "$MASTER_BIN" serve \
            --listen "${MASTER_IPS[$i]}:$MASTER_PORT" --advertise-url "$(master_url "$i")" \
            --slave-timeout 3s --heartbeat-interval 500ms
    done
    for i in 0 1 2; do
        PROCESS="master$((i + 1))" wait_until "$START_TIMEOUT" "master $((i + 1)) is healthy" healthy "$i"
    done
    for i in 0 1; do
        local name="slave-$((i + 1))"
        section "$name, given every master"
        start_process "$name" "${SLAVES[$i]}" -- "$SLAVE_BIN" --master "$(all_master_urls)" --name "$name" \
            --listen "${SLAVE_IPS[$i]}:$SLAVE_PORT" --advertise-url "http://${SLAVE_IPS[$i]}:$SLAVE_PORT" \
            --capacity 1 --heartbeat-interval 500ms --shutdown-grace 5s
        local m
        for m in 0 1 2; do
            PROCESS="$name" wait_until "$START_TIMEOUT" "master $((m + 1)) lists $name up" slave_up_on "$m" "$name"
        done
    done
    trap - EXIT
    section "up"
    api 0 GET /masters && jq -r '.masters[] | "master \(.id) \(.url) up=\(.up)"' <<<"$HTTP_BODY"
    api 0 GET /slaves && jq -r '.slaves[] | "position \(.position): \(.name) \(.url) \(.state)"' <<<"$HTTP_BODY"
    say "logs: $LOG_DIR"
}

cmd_down() {
    require_root
    section "down"
    local ns pids=() deadline data
    for ns in "${ALL_NAMESPACES[@]}"; do
        namespace_exists "$ns" || continue
        mapfile -t -O "${#pids[@]}" pids < <(ip netns pids "$ns")
    done
    data="$(cat "$RUN_DIR/pgdata" 2>/dev/null || true)"
    if [[ -n "$data" && -f "$data/postmaster.pid" ]]; then
        locate_postgres
        runuser -u postgres -- "$PG_BIN/pg_ctl" -D "$data" -m fast -w stop >/dev/null 2>&1 || true
    fi
    if [[ ${#pids[@]} -gt 0 ]]; then
        kill -TERM "${pids[@]}" 2>/dev/null || true
        deadline=$((SECONDS + STOP_TIMEOUT))
        while kill -0 "${pids[@]}" 2>/dev/null && ((SECONDS < deadline)); do sleep 0.1; done
        kill -KILL "${pids[@]}" 2>/dev/null || true
    fi
    for ns in "${ALL_NAMESPACES[@]}"; do
        if namespace_exists "$ns"; then ip netns del "$ns"; fi
    done
    local dir
    dir="$(log_dir || true)"
    rm -rf "$RUN_DIR"
    say "down${dir:+; logs kept in $dir}"
}

cmd_status() {
    require_root
    local name i
    for name in master1 master2 master3 slave-1 slave-2; do
        if is_running "$name"; then say "$name: running"; else say "$name: not running"; fi
    done
    for i in 0 1 2; do
        if healthy "$i"; then
            api "$i" GET /masters && jq -r '.masters[] | "master \(.id) \(.url) up=\(.up)"' <<<"$HTTP_BODY"
            api "$i" GET /slaves && jq -r '.slaves[] | "\(.name) \(.state) \(.running)/\(.capacity)"' <<<"$HTTP_BODY"
            api "$i" GET '/tasks?limit=1' && jq -c .counts <<<"$HTTP_BODY"
            return 0
        fi
    done
    say "no master answers"
    return 1
}

# Long-polls task $2 on master $1 until it is final; leaves it in HTTP_BODY.
wait_final() {
    local index="$1" id="$2"
    while ((SECONDS < WALK_DEADLINE)); do
        api "$index" GET "/tasks/$id?wait=10" || die "no answer from master $((index + 1))"
        jq -e '.status == "in_progress" or .status == "pending"' <<<"$HTTP_BODY" >/dev/null || return 0
    done
    die "task $id did not finish within ${WALK_BUDGET}s"
}

master_shown_down() {
    api 1 GET /masters 2>/dev/null &&
        jq -e --arg url "$(master_url 0)" 'any(.masters[]; .url == $url and .up == false)' <<<"$HTTP_BODY" >/dev/null
}

cmd_walkthrough() {
    require_root
    require_tools ip curl jq
    local started_here=0 id1 id2 i
    if ! namespace_exists "$NS_LAN"; then cmd_up; started_here=1; fi
    LOG_DIR="$(log_dir)" || die "no log directory: run '$0 down' then '$0 up'"
    TOKEN="$(cat "$RUN_DIR/token")"
    WALK_DEADLINE=$((SECONDS + WALK_BUDGET))
    trap 'on_failure walkthrough' EXIT
    section "walkthrough: the seed demo across three masters"
    api 2 GET /masters
    show
    expect "three masters up" 200 '[.masters[] | select(.up)] | length == 3'

    section "1. through master 1: the first task goes to slave-1"
    api 0 POST /tasks "{\"expression\":\"2+3*4\",\"delay_ms\":$TASK_DELAY_MS}"
    show
    expect '"Task successfully assigned to slave-1"' 201 '.message == "Task successfully assigned to slave-1"'
    id1="$(jq -r .id <<<"$HTTP_BODY")"

    section "2. through master 2: the second task goes to slave-2"
    api 1 POST /tasks "{\"expression\":\"sqrt(x)*pi\",\"variables\":{\"x\":2},\"delay_ms\":$TASK_DELAY_MS}"
    show
    expect '"Task successfully assigned to slave-2"' 201 '.message == "Task successfully assigned to slave-2"'
    id2="$(jq -r .id <<<"$HTTP_BODY")"

    section "3. master 1 is killed (SIGKILL) while both tasks run"
    kill -KILL "$(cat "$RUN_DIR/master1.pid")"
    say "  killed master 1"

    section "4. through master 3: every slave is busy"
    api 2 POST /tasks '{"expression":"1+1"}'
    show
    expect "503 full_capacity" 503 '.error == "full_capacity" and .message == "All slaves are busy: full capacity"'

    section "5. masters 2 and 3 both show the two tasks in progress, nothing else"
    for i in 1 2; do
        api "$i" GET "/get-tasks?after=$((id1 - 1))"
        show
        expect "tasks $id1 and $id2 in_progress" 200 \
            "[.tasks[] | [.id, .status]] == [[$id1,\"in_progress\"],[$id2,\"in_progress\"]]"
    done

    section "6. both finish; their results reach the masters that are left"
    wait_final 1 "$id1"
    show
    wait_final 2 "$id2"
    show
    api 2 GET "/get-tasks?after=$((id1 - 1))"
    show
    expect "14 by slave-1 and 4.442882938158366 by slave-2, one attempt each" 200 \
        "[.tasks[] | [.status, .result, .slave.name, .attempts]] == [[\"done\",14,\"slave-1\",1],[\"done\",4.442882938158366,\"slave-2\",1]]"
    api 1 GET /slaves
    expect "both slaves still up, idle" 200 '[.slaves[] | [.name, .state, .running]] == [["slave-1","up",0],["slave-2","up",0]]'
    wait_until 15 "GET /masters to show master 1 down" master_shown_down
    say "  ok: GET /masters shows master 1 down"

    section "walkthrough passed in $((SECONDS - WALK_DEADLINE + WALK_BUDGET))s"
    trap - EXIT
    if ((started_here)); then cmd_down; fi
}

on_failure() {
    local status=$? dir log
    trap - EXIT
    say "$1 FAILED; cleaning up" >&2
    dir="${LOG_DIR:-$(log_dir || true)}"
    for log in "$dir"/*.log; do
        [[ -e "$log" ]] || continue
        printf '\n-- last lines of %s\n' "$log" >&2
        tail -n 15 "$log" >&2
    done
    cmd_down >&2 || true
    exit "$status"
}

main() {
    [[ $# -eq 1 ]] || usage
    case "$1" in
        up) cmd_up ;;
        down) cmd_down ;;
        status) cmd_status ;;
        walkthrough) cmd_walkthrough ;;
        *) usage ;;
    esac
}

main "$@"
