#!/usr/bin/env bash
# A restore drill against moto (which has versioning), with the release
# binary: sync a tree of FILES small files (default 2,000) and one BIG_MIB
# file (default 100 MiB) into a versioned bucket, take a copy, change,
# delete and rename files, sync again, then
#   1. restore --at the first time into an empty directory and compare it
#      with the copy, byte for byte (diff -r) and mtime for mtime;
#   2. restore the present into another directory, killed (SIGKILL) after
#      KILL_AFTER files (default 500) and run again, then verify it;
# printing files, bytes and seconds for each run.
# Needs ./scripts/setup-test-env.sh (moto in .ci/venv).
set -euo pipefail
cd "$(dirname "$0")/.."
FILES=${FILES:-2000}
BIG_MIB=${BIG_MIB:-100}
KILL_AFTER=${KILL_AFTER:-500}
BIN=${S3MA:-target/release/s3ma}
PY=.ci/venv/bin/python
[ -x "$BIN" ] || cargo build --release --locked
[ -x .ci/venv/bin/moto_server ] || ./scripts/setup-test-env.sh
work=$(mktemp -d)
port=$($PY -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
.ci/venv/bin/moto_server -H 127.0.0.1 -p "$port" >"$work/moto.log" 2>&1 &
server=$!
trap 'kill $server 2>/dev/null || true; [ -n "${KEEP:-}" ] || rm -rf "$work"' EXIT
export AWS_ACCESS_KEY_ID=test AWS_SECRET_ACCESS_KEY=test AWS_EC2_METADATA_DISABLED=true
unset AWS_CA_BUNDLE
ep=http://127.0.0.1:$port
for _ in $(seq 100); do curl -s "$ep" >/dev/null && break; sleep 0.1; done
$PY - "$ep" <<'PY'
import sys, boto3
s3 = boto3.client("s3", endpoint_url=sys.argv[1], region_name="us-east-1")
s3.create_bucket(Bucket="drill")
s3.put_bucket_versioning(Bucket="drill", VersioningConfiguration={"Status": "Enabled"})
PY
$PY - "$work/tree" "$FILES" "$BIG_MIB" <<'PY'
import os, random, sys
root, n, big = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
rnd = random.Random(7)
for i in range(n):
    d = os.path.join(root, f"d{i % 40}", f"e{i % 7}")
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, f"f{i:05}.txt"), "wb") as f:
        f.write(rnd.randbytes(rnd.randint(100, 40000)))
    os.utime(os.path.join(d, f"f{i:05}.txt"), ns=(0, 1_600_000_000_123_456_789 + i))
with open(os.path.join(root, "big.bin"), "wb") as f:
    f.write(rnd.randbytes(big << 20))
PY
E=(--endpoint "$ep")
state=(--state-dir "$work/state")
count() { { find "$1" -type f ! -name '.s3ma-restore-*' 2>/dev/null || true; } | wc -l; }
bytes() { du -sb --apparent-size "$1" | cut -f1; }
timed() { # label, command...
    local label=$1; shift
    local t0=$EPOCHREALTIME
    "$@"
    printf '%-44s %6.2f s\n' "$label" "$(echo "$EPOCHREALTIME - $t0" | bc)"
}
timed "sync (first)" "$BIN" sync "${E[@]}" "$work/tree" s3://drill/site -q --metadata "${state[@]}"
cp -a "$work/tree" "$work/copy"
at=$(date -u +%Y-%m-%dT%H:%M:%S.%NZ)
sleep 1.1  # the next versions must be newer than $at on the server's clock
# Change 100 files, delete 100, rename a directory, add 50.
$PY - "$work/tree" <<'PY'
import os, random, sys, shutil
root = sys.argv[1]
rnd = random.Random(8)
files = sorted(os.path.join(dp, f) for dp, _, fs in os.walk(root) for f in fs)
for p in files[10:110]:
    with open(p, "ab") as f: f.write(b"changed")
for p in files[200:300]:
    os.remove(p)
shutil.move(os.path.join(root, "d3"), os.path.join(root, "renamed"))
os.makedirs(os.path.join(root, "new"), exist_ok=True)
for i in range(50):
    with open(os.path.join(root, "new", f"n{i}.txt"), "wb") as f: f.write(rnd.randbytes(500))
PY
timed "sync --delete (after the changes)" "$BIN" sync "${E[@]}" "$work/tree" s3://drill/site -q --metadata --delete "${state[@]}"
echo "tree then: $(count "$work/copy") files, $(bytes "$work/copy") bytes; now: $(count "$work/tree") files"
timed "restore --at (the first tree)" "$BIN" restore "${E[@]}" s3://drill/site "$work/then" --at "$at" -q
diff -r "$work/copy" "$work/then" && echo "diff -r copy restored: identical"
(cd "$work/copy" && find . -type f -printf '%p %T@ %m\n' | sort) >"$work/m1"
(cd "$work/then" && find . -type f -printf '%p %T@ %m\n' | sort) >"$work/m2"
cmp -s "$work/m1" "$work/m2" && echo "mtimes and modes: identical ($(wc -l <"$work/m1") files)"
echo "restored at $at: $(count "$work/then") files, $(bytes "$work/then") bytes"
"$BIN" restore "${E[@]}" s3://drill/site "$work/now" -j 4 -q &
pid=$!
while [ "$(count "$work/now")" -lt "$KILL_AFTER" ]; do sleep 0.01; done
kill -9 $pid; wait $pid 2>/dev/null || true
echo "killed with $(count "$work/now") files in place"
out=$( { "$BIN" restore "${E[@]}" s3://drill/site "$work/now" --json | tail -1; } )
echo "restore again: $out"
timed "verify (the present tree)" "$BIN" verify "${E[@]}" "$work/now" s3://drill/site -q
# A bucket holds files only: the directories the deletions emptied are not
# in it.
find "$work/tree" -mindepth 1 -type d -empty -delete
diff -r "$work/tree" "$work/now" && echo "diff -r tree restored (empty directories left out): identical"
