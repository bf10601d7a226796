#!/usr/bin/env bash
# The three-VM demo (one master, two slaves; SPEC §1, §9) on one machine, as root.
#
#   ops/demo/three-hosts.sh up           start the cluster
#   ops/demo/three-hosts.sh walkthrough  run the seed demo and check every answer
#   ops/demo/three-hosts.sh status       show namespaces, processes, slaves, task counts
#   ops/demo/three-hosts.sh down         stop everything (idempotent)
#
# Each "host" is a network namespace (tm-master, tm-slave1, tm-slave2) with one
# interface, eth0, on the private subnet 10.203.0.0/24. Their cables meet at a Linux
# bridge that lives in a fourth namespace, tm-lan, not in the host's own: the demo adds
# no interface, address or route to the host, so its traffic cannot leave these four
# namespaces, and the host's firewall (br_netfilter) cannot drop it.
#
#   tm-master  10.203.0.10  master serve --listen 10.203.0.10:8080
#   tm-slave1  10.203.0.11  slave --name slave-1 --listen 10.203.0.11:9000 --capacity 1
#   tm-slave2  10.203.0.12  slave --name slave-2 --listen 10.203.0.12:9000 --capacity 1
#
# They listen on non-loopback addresses, so they share a CLUSTER_TOKEN (SPEC §8): the
# caller's CLUSTER_TOKEN if set, else a random one, kept in /run/tm-demo/token.
# slave-1 is started and seen in GET /slaves before slave-2 starts, so the dispatch
# order is always slave-1, slave-2. Clients talk to the master from inside tm-master
# (ip netns exec tm-master curl ...). Process logs and the ledger go to a temporary
# directory that "down" keeps and prints.
#
# Environment:
#   BIN_DIR    where the master and slave binaries are (default: target/release of
#              this repository, built with "cargo build --release" when missing)
#   RUST_LOG   passed to the processes (default: info)
#   TM_RUN_DIR where pids, the token and the log directory's name are kept
#              (default: /run/tm-demo)
set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
readonly REPO_ROOT
readonly RUN_DIR="${TM_RUN_DIR:-/run/tm-demo}"

readonly NS_LAN=tm-lan
readonly BRIDGE=tm-br0
readonly NS_MASTER=tm-master
readonly NS_SLAVE1=tm-slave1
readonly NS_SLAVE2=tm-slave2
readonly ALL_NAMESPACES=("$NS_MASTER" "$NS_SLAVE1" "$NS_SLAVE2" "$NS_LAN")
readonly PREFIX_LEN=24
readonly MASTER_IP=10.203.0.10
readonly SLAVE1_IP=10.203.0.11
readonly SLAVE2_IP=10.203.0.12
readonly MASTER_PORT=8080
readonly SLAVE_PORT=9000
readonly MASTER_URL="http://$MASTER_IP:$MASTER_PORT"

# Bounds. Startup of a debug build takes well under a second; these only stop a hang.
readonly START_TIMEOUT=20  # s for a process to print "listening on" / register
readonly STOP_TIMEOUT=10   # s for processes to exit after SIGTERM before SIGKILL
readonly WALK_BUDGET=55    # s for the whole walkthrough (the brief: < 60 s)
readonly CURL_MAX_TIME=15  # s for one HTTP request (long polls ask for 10 s)
# The slaves get a short shutdown grace so "down" is quick even with tasks running.
readonly DEMO_SHUTDOWN_GRACE=5s

# The seed demo: 7 s of simulated work, as the original's tasks took.
readonly SEED_TASK='{"expression":"2+3*4","delay_ms":7000}'
readonly SEED_RESULT=14

say() { printf '%s\n' "$*"; }
section() { printf '\n== %s\n' "$*"; }
die() {
    printf 'three-hosts: %s\n' "$*" >&2
    exit 1
}

usage() {
    sed -n '2,7p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
    exit 2
}

require_root() {
    [[ $EUID -eq 0 ]] || die "needs root (network namespaces): run it with sudo"
}

require_tools() {
    local tool missing=()
    for tool in "$@"; do
        command -v "$tool" >/dev/null || missing+=("$tool")
    done
    [[ ${#missing[@]} -eq 0 ]] || die "missing tools: ${missing[*]} (Debian: apt-get install -y iproute2 curl jq)"
}

namespace_exists() {
    [[ -e "/run/netns/$1" ]]
}

any_namespace_exists() {
    local ns
    for ns in "${ALL_NAMESPACES[@]}"; do
        namespace_exists "$ns" && return 0
    done
    return 1
}

log_dir() {
    [[ -f "$RUN_DIR/log-dir" ]] && cat "$RUN_DIR/log-dir"
}

# ---------------------------------------------------------------------------- binaries

# Sets MASTER_BIN and SLAVE_BIN; builds the release binaries when BIN_DIR is the default.
locate_binaries() {
    local bin_dir="${BIN_DIR:-$REPO_ROOT/target/release}"
    if [[ ! -x "$bin_dir/master" || ! -x "$bin_dir/slave" ]]; then
        if [[ -n "${BIN_DIR:-}" ]]; then
            die "BIN_DIR=$BIN_DIR has no executable master and slave"
        fi
        section "building release binaries (cargo build --release -p master -p slave)"
        command -v cargo >/dev/null || die "no master/slave in $bin_dir and no cargo to build them"
        (cd "$REPO_ROOT" && SQLX_OFFLINE=true cargo build --release -p master -p slave)
        [[ -x "$bin_dir/master" && -x "$bin_dir/slave" ]] ||
            die "cargo built no master/slave in $bin_dir (CARGO_TARGET_DIR set? then pass BIN_DIR)"
    fi
    bin_dir="$(cd "$bin_dir" && pwd)"
    MASTER_BIN="$bin_dir/master"
    SLAVE_BIN="$bin_dir/slave"
}

# ----------------------------------------------------------------------------- network

# Connects namespace $1 to the bridge as eth0 with address $2; the bridge port in tm-lan
# is named after the namespace.
plug_in() {
    local ns="$1" ip="$2"
    ip netns add "$ns"
    ip -n "$ns" link set lo up
    ip -n "$NS_LAN" link add "$ns" type veth peer name eth0 netns "$ns"
    ip -n "$NS_LAN" link set "$ns" master "$BRIDGE" up
    ip -n "$ns" addr add "$ip/$PREFIX_LEN" dev eth0
    ip -n "$ns" link set eth0 up
}

network_up() {
    section "network: namespaces ${ALL_NAMESPACES[*]}, bridge $BRIDGE in $NS_LAN, 10.203.0.0/$PREFIX_LEN"
    ip netns add "$NS_LAN"
    ip -n "$NS_LAN" link set lo up
    ip -n "$NS_LAN" link add "$BRIDGE" type bridge
    ip -n "$NS_LAN" link set "$BRIDGE" up
    plug_in "$NS_MASTER" "$MASTER_IP"
    plug_in "$NS_SLAVE1" "$SLAVE1_IP"
    plug_in "$NS_SLAVE2" "$SLAVE2_IP"
    say "$NS_MASTER $MASTER_IP   $NS_SLAVE1 $SLAVE1_IP   $NS_SLAVE2 $SLAVE2_IP"
}

# ---------------------------------------------------------------------------- processes

# Starts "$@" in namespace $2 as process $1, in the background, with a clean environment (no
# proxy variables: the binaries' HTTP client would honour them), stdout and stderr in
# $LOG_DIR/$1.log. The token travels in the environment, not on the command line.
start_process() {
    local name="$1" ns="$2"
    shift 2
    say "starting $name in $ns: $*"
    ip netns exec "$ns" env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin \
        NO_COLOR=1 RUST_LOG="${RUST_LOG:-info}" CLUSTER_TOKEN="$TOKEN" "$@" \
        >"$LOG_DIR/$name.log" 2>&1 </dev/null &
    echo $! >"$RUN_DIR/$name.pid"
}

is_running() {
    local pid
    pid="$(cat "$RUN_DIR/$1.pid" 2>/dev/null)" || return 1
    kill -0 "$pid" 2>/dev/null
}

# Polls `$3...` every 0.1 s until it succeeds; fails after $1 seconds, naming $2.
# Between polls it checks that process $PROCESS (if set) is still alive.
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

has_printed_listening() {
    grep -q '^listening on http://' "$LOG_DIR/$1.log" 2>/dev/null
}

# ------------------------------------------------------------------------------ HTTP

# Sends one request from inside tm-master: api METHOD PATH [JSON]. Sets HTTP_REQUEST,
# HTTP_STATUS, HTTP_BODY and HTTP_HEADERS; fails only when no HTTP answer came at all.
api() {
    local method="$1" path="$2" body="${3:-}" out
    local args=(--noproxy '*' --silent --show-error --max-time "$CURL_MAX_TIME"
        --request "$method" --dump-header - --write-out '\n%{http_code}')
    if [[ -n "$body" ]]; then
        args+=(--header 'content-type: application/json' --data "$body")
    fi
    HTTP_REQUEST="$method $path${body:+ $body}"
    out="$(ip netns exec "$NS_MASTER" curl "${args[@]}" "$MASTER_URL$path")" || return 1
    HTTP_STATUS="${out##*$'\n'}"
    out="${out%$'\n'*}"
    HTTP_HEADERS="${out%%$'\r\n\r\n'*}"
    HTTP_BODY="${out#*$'\r\n\r\n'}"
}

master_is_healthy() {
    api GET /healthz 2>/dev/null && [[ "$HTTP_STATUS" == 200 ]]
}

# Whether GET /slaves lists slave $1 as up.
slave_is_up() {
    api GET /slaves 2>/dev/null && [[ "$HTTP_STATUS" == 200 ]] &&
        jq -e --arg name "$1" 'any(.slaves[]; .name == $name and .state == "up")' <<<"$HTTP_BODY" >/dev/null
}

# ----------------------------------------------------------------------------- up/down

cmd_up() {
    require_root
    require_tools ip curl jq
    if any_namespace_exists || [[ -d "$RUN_DIR" ]]; then
        die "the demo is already (partly) up: run '$0 down' first"
    fi
    locate_binaries
    mkdir -p "$RUN_DIR"
    chmod 0700 "$RUN_DIR"
    LOG_DIR="$(mktemp -d "${TMPDIR:-/tmp}/tm-demo.XXXXXX")"
    echo "$LOG_DIR" >"$RUN_DIR/log-dir"
    TOKEN="${CLUSTER_TOKEN:-$(od -An -N16 -tx1 /dev/urandom | tr -d ' \n')}"
    (umask 077 && printf '%s\n' "$TOKEN" >"$RUN_DIR/token")
    trap 'on_up_failure' EXIT

    network_up

    section "master on $MASTER_URL"
    start_process master "$NS_MASTER" "$MASTER_BIN" serve \
        --listen "$MASTER_IP:$MASTER_PORT" --db "$LOG_DIR/master.db"
    PROCESS=master wait_until "$START_TIMEOUT" "master prints 'listening on'" has_printed_listening master
    PROCESS=master wait_until "$START_TIMEOUT" "master answers GET /healthz with 200" master_is_healthy
    say "master is healthy"

    start_slave slave-1 "$NS_SLAVE1" "$SLAVE1_IP"
    start_slave slave-2 "$NS_SLAVE2" "$SLAVE2_IP"

    trap - EXIT
    section "up"
    api GET /slaves
    jq -r '.slaves[] | "position \(.position): \(.name) \(.url) capacity \(.capacity) \(.state)"' <<<"$HTTP_BODY"
    say "logs and ledger: $LOG_DIR"
    say "try: ip netns exec $NS_MASTER curl -s $MASTER_URL/get-tasks"
}

# Starts slave $1 in namespace $2 at address $3 and waits until the master lists it up,
# so that the next slave registers after it (dispatch order = registration order).
start_slave() {
    local name="$1" ns="$2" ip="$3"
    section "$name on http://$ip:$SLAVE_PORT"
    start_process "$name" "$ns" "$SLAVE_BIN" --master "$MASTER_URL" --name "$name" \
        --listen "$ip:$SLAVE_PORT" --advertise-url "http://$ip:$SLAVE_PORT" --capacity 1 \
        --shutdown-grace "$DEMO_SHUTDOWN_GRACE"
    PROCESS="$name" wait_until "$START_TIMEOUT" "$name prints 'listening on'" has_printed_listening "$name"
    PROCESS="$name" wait_until "$START_TIMEOUT" "GET /slaves lists $name as up" slave_is_up "$name"
    say "$name is registered"
}

on_up_failure() {
    local status=$?
    trap - EXIT
    say "up failed; cleaning up" >&2
    show_log_tails >&2
    cmd_down >&2 || true
    exit "$status"
}

show_log_tails() {
    local dir log
    dir="${LOG_DIR:-$(log_dir)}" || return 0
    [[ -n "$dir" && -d "$dir" ]] || return 0
    for log in "$dir"/*.log; do
        [[ -e "$log" ]] || continue
        printf '\n-- last lines of %s\n' "$log"
        tail -n 15 "$log"
    done
}

# Signals every process in our namespaces (they are ours: the namespaces are), waits,
# then removes the namespaces. Safe to run any number of times.
cmd_down() {
    require_root
    require_tools ip
    section "down"
    local ns pids=() deadline dir
    for ns in "${ALL_NAMESPACES[@]}"; do
        namespace_exists "$ns" || continue
        mapfile -t -O "${#pids[@]}" pids < <(ip netns pids "$ns")
    done
    if [[ ${#pids[@]} -gt 0 ]]; then
        say "stopping processes ${pids[*]} (SIGTERM)"
        kill -TERM "${pids[@]}" 2>/dev/null || true
        deadline=$((SECONDS + STOP_TIMEOUT))
        while kill -0 "${pids[@]}" 2>/dev/null && ((SECONDS < deadline)); do
            sleep 0.1
        done
        if kill -0 "${pids[@]}" 2>/dev/null; then
            say "still running after ${STOP_TIMEOUT}s: SIGKILL"
            kill -KILL "${pids[@]}" 2>/dev/null || true
        fi
    fi
    for ns in "${ALL_NAMESPACES[@]}"; do
        if namespace_exists "$ns"; then
            ip netns del "$ns"
            say "removed namespace $ns"
        fi
    done
    dir="$(log_dir || true)"
    rm -rf "$RUN_DIR"
    if [[ -n "$dir" ]]; then
        say "down; logs and ledger kept in $dir"
    else
        say "down"
    fi
}

cmd_status() {
    require_root
    require_tools ip curl jq
    local ns name healthy=0
    section "namespaces"
    for ns in "${ALL_NAMESPACES[@]}"; do
        if namespace_exists "$ns"; then
            say "$ns: $(ip -n "$ns" -br addr show | awk '$1 != "lo" {print $1, $3}' | paste -sd ' ')"
        else
            say "$ns: absent"
            healthy=1
        fi
    done
    section "processes"
    for name in master slave-1 slave-2; do
        if is_running "$name"; then
            say "$name: running, pid $(cat "$RUN_DIR/$name.pid")"
        else
            say "$name: not running"
            healthy=1
        fi
    done
    section "cluster (from $NS_MASTER)"
    if namespace_exists "$NS_MASTER" && master_is_healthy; then
        api GET /slaves
        jq -r '.slaves[] | "\(.name) \(.url) \(.state) running \(.running)/\(.capacity)"' <<<"$HTTP_BODY"
        api GET '/tasks?limit=1'
        jq -r '.counts | to_entries | map("\(.key) \(.value)") | "tasks: " + join(", ")' <<<"$HTTP_BODY"
        if ! slave_is_up slave-1 || ! slave_is_up slave-2; then
            healthy=1
        fi
    else
        say "master: no answer on $MASTER_URL/healthz"
        healthy=1
    fi
    say "logs: $(log_dir || echo none)"
    return "$healthy"
}

# --------------------------------------------------------------------------- walkthrough

# expect WHAT JQ_FILTER: the JSON in HTTP_BODY must satisfy the filter.
expect_json() {
    local what="$1" filter="$2"
    if jq -e "$filter" <<<"$HTTP_BODY" >/dev/null 2>&1; then
        say "  ok: $what"
    else
        die "expected $what; got HTTP $HTTP_STATUS $HTTP_BODY"
    fi
}

expect_status() {
    [[ "$HTTP_STATUS" == "$1" ]] || die "expected HTTP $1; got HTTP $HTTP_STATUS $HTTP_BODY"
    say "  ok: HTTP $1"
}

walk_deadline_left() {
    echo $((WALK_DEADLINE - SECONDS))
}

# Prints the last request and its answer.
show() {
    say "> $HTTP_REQUEST"
    say "< HTTP $HTTP_STATUS $HTTP_BODY"
}

submit_seed_task() {
    api POST /tasks "$SEED_TASK" || die "no answer to POST /tasks"
    show
}

# Long-polls task $1 (GET /tasks/{id}?wait=10) until it is finished or the walkthrough's
# time is up; leaves the final answer in HTTP_BODY.
wait_until_finished() {
    local id="$1" wait
    while :; do
        wait=$(($(walk_deadline_left) - 1))
        ((wait > 0)) || die "task $id did not finish within the walkthrough's ${WALK_BUDGET}s"
        ((wait <= 10)) || wait=10
        api GET "/tasks/$id?wait=$wait" || die "no answer to GET /tasks/$id"
        [[ "$HTTP_STATUS" == 200 ]] || die "GET /tasks/$id: HTTP $HTTP_STATUS $HTTP_BODY"
        jq -e '.status == "in_progress" or .status == "pending"' <<<"$HTTP_BODY" >/dev/null || return 0
    done
}

cmd_walkthrough() {
    require_root
    require_tools ip curl jq
    local started_here=0 id1 id2
    if ! namespace_exists "$NS_MASTER"; then
        cmd_up
        started_here=1
    fi
    WALK_DEADLINE=$((SECONDS + WALK_BUDGET))
    LOG_DIR="$(log_dir)" || die "no log directory in $RUN_DIR: run '$0 down' then '$0 up'"
    trap 'on_walkthrough_exit' EXIT

    section "walkthrough: the seed demo against $MASTER_URL (from $NS_MASTER)"
    PROCESS=master wait_until 5 "master answers GET /healthz with 200" master_is_healthy
    api GET /slaves
    show
    expect_json "slaves in order slave-1, slave-2, both up and idle" \
        '[.slaves[] | [.name, .state, .running]] == [["slave-1","up",0],["slave-2","up",0]]'

    section "1. first task goes to slave-1"
    submit_seed_task
    expect_status 201
    expect_json 'message "Task successfully assigned to slave-1", status in_progress' \
        '.message == "Task successfully assigned to slave-1" and .status == "in_progress" and .slave.name == "slave-1"'
    id1="$(jq -r .id <<<"$HTTP_BODY")"

    section "2. second task goes to slave-2"
    submit_seed_task
    expect_status 201
    expect_json 'message "Task successfully assigned to slave-2", status in_progress' \
        '.message == "Task successfully assigned to slave-2" and .status == "in_progress" and .slave.name == "slave-2"'
    id2="$(jq -r .id <<<"$HTTP_BODY")"

    section "3. third task: every slave is busy"
    submit_seed_task
    expect_status 503
    expect_json 'error full_capacity, "All slaves are busy: full capacity"' \
        '.error == "full_capacity" and .message == "All slaves are busy: full capacity"'
    grep -qi '^retry-after:' <<<"$HTTP_HEADERS" || die "503 full_capacity without a Retry-After header"
    say "  ok: Retry-After: $(grep -i '^retry-after:' <<<"$HTTP_HEADERS" | cut -d' ' -f2 | tr -d '\r')"

    section "4. both tasks in progress, nothing stored for the third"
    api GET "/get-tasks?after=$((id1 - 1))"
    show
    expect_json "tasks $id1 (slave-1) and $id2 (slave-2) in_progress, no other task" \
        "[.tasks[] | [.id, .status, .slave.name]] == [[$id1,\"in_progress\",\"slave-1\"],[$id2,\"in_progress\",\"slave-2\"]]"

    section "5. both tasks done (long poll GET /tasks/{id}?wait=10)"
    wait_until_finished "$id1"
    show
    wait_until_finished "$id2"
    show
    api GET "/get-tasks?after=$((id1 - 1))"
    show
    expect_json "tasks $id1 and $id2 done with result $SEED_RESULT, one attempt each" \
        "[.tasks[] | [.id, .status, .result, .slave.name, .attempts]] == [[$id1,\"done\",$SEED_RESULT,\"slave-1\",1],[$id2,\"done\",$SEED_RESULT,\"slave-2\",1]]"

    section "walkthrough passed in $((SECONDS - WALK_DEADLINE + WALK_BUDGET))s"
    trap - EXIT
    if ((started_here)); then
        cmd_down
    fi
    say "logs and ledger: $LOG_DIR"
}

on_walkthrough_exit() {
    local status=$?
    trap - EXIT
    say "walkthrough FAILED; cleaning up" >&2
    show_log_tails >&2
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
