#!/usr/bin/env bash
# CI: ops/grafana/cluster.json is valid JSON, and every metric its panels query is one
# that a live master and slave export (the `# TYPE` lines of their /metrics; a labelled
# counter is named once it has a sample: the check runs one task and one refusal first).
# Needs python3; builds target/debug/master.
set -euo pipefail
cd "$(dirname "$0")/.."

work="$(mktemp -d)"
master_pid=""
cleanup() {
    [[ -z "$master_pid" ]] || kill "$master_pid" 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

SQLX_OFFLINE=true cargo build --quiet -p master --bin master
target/debug/master serve --listen 127.0.0.1:0 --db "$work/master.db" --local-slaves 1 >"$work/out" 2>"$work/err" &
master_pid=$!
for _ in $(seq 1 100); do
    grep -q '^local slave ' "$work/out" 2>/dev/null && break
    sleep 0.1
done
master_url="$(sed -n 's/^listening on //p' "$work/out")"
slave_url="$(sed -n 's/^local slave [^ ]* at //p' "$work/out")"
[[ -n "$master_url" && -n "$slave_url" ]] || { cat "$work/err" >&2; echo "the master did not start" >&2; exit 1; }
python3 - "$master_url" "$slave_url" ops/grafana/cluster.json <<'PY'
import json, re, sys, urllib.error, urllib.request

master, slave, path = sys.argv[1:4]
dashboard = json.load(open(path))

def post(url, body):
    request = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST")
    try:
        return json.load(urllib.request.urlopen(request, timeout=10))
    except urllib.error.HTTPError as refused:
        return json.load(refused)

# Labelled families appear in /metrics once they have a sample: one task done, one
# refused for full capacity (the only slave has one slot), so every family has one.
first = post(master + "/tasks", {"expression": "1+1", "delay_ms": 500})
refused = post(master + "/tasks", {"expression": "2+2"})
assert refused.get("error") == "full_capacity", refused
urllib.request.urlopen(f"{master}/tasks/{first['id']}?wait=10", timeout=15).read()

exported = set()
for url in (master, slave):
    text = urllib.request.urlopen(url + "/metrics", timeout=10).read().decode()
    exported |= {line.split()[2] for line in text.splitlines() if line.startswith("# TYPE ")}

def base(name):
    return re.sub(r"_(total|bucket|sum|count)$", "", name)

queried = set()
for panel in dashboard["panels"]:
    for target in panel.get("targets", []):
        queried |= set(re.findall(r"\b(?:master|slave)_[a-z_]+\b", target["expr"]))
missing = sorted(name for name in queried if base(name) not in {base(e) for e in exported})
print(f"{len(dashboard['panels'])} panels query {len(queried)} metrics; live /metrics export {len(exported)}")
if missing:
    sys.exit("not exported by a live master or slave: " + ", ".join(missing))
print("every queried metric exists")
PY
