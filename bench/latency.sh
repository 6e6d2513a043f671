#!/usr/bin/env bash
# Small uploads over a long round trip: 1,000 files of 4 KiB sent to s3s-fs
# through bench/latency-proxy.py, which adds RTT_MS (default 35, as from
# Europe to AWS Tokyo) to every exchange, once with --concurrency 32 fixed
# and once adapting. Needs s3s-fs on PATH.
#   bench/latency.sh            # uses target/release/s3ma
#   EXTRA=-vv SHOW='^[|]|in flight' bench/latency.sh   # how the limit moved
set -euo pipefail
cd "$(dirname "$0")/.."
RTT_MS=${RTT_MS:-35}
FILES=${FILES:-1000}
BIN=${S3MA:-target/release/s3ma}
PORT=${PORT:-19210}
[ -x "$BIN" ] || cargo build --release --locked
work=$(mktemp -d)
mkdir -p "$work/fs/bench" "$work/tree"
s3s-fs --host 127.0.0.1 --port "$PORT" --access-key bench --secret-key benchbench "$work/fs" \
    >"$work/s3s.log" 2>&1 &
server=$!
python3 bench/latency-proxy.py "$((PORT + 1))" "127.0.0.1:$PORT" "$RTT_MS" &
proxy=$!
cleanup() {
    kill "$proxy" 2>/dev/null || true
    kill "$server" 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT
python3 - "$work/tree" "$FILES" <<'PY'
import os, sys
root, n = sys.argv[1], int(sys.argv[2])
for i in range(n):
    d = os.path.join(root, f"d{i % 20:02}")
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, f"f{i:05}.txt"), "wb") as f:
        f.write(os.urandom(4096))
PY
for _ in $(seq 50); do
    curl -s -o /dev/null "http://127.0.0.1:$PORT/" && break
    sleep 0.1
done
for _ in $(seq 50); do
    curl -s -o /dev/null "http://127.0.0.1:$((PORT + 1))/" && break
    sleep 0.1
done
export AWS_ACCESS_KEY_ID=bench AWS_SECRET_ACCESS_KEY=benchbench
echo "| run | wall | CPU | peak RSS |"
echo "|---|--:|--:|--:|"
for mode in fixed32 adaptive; do
    args=()
    [ "$mode" = fixed32 ] && args=(--concurrency 32)
    state="$work/state-$mode"
    /usr/bin/time -f "| $mode, $FILES × 4 KiB, +${RTT_MS} ms RTT | %e s | %U+%S s | %M KiB |" \
        "$BIN" sync "$work/tree" "s3://bench/$mode/" --endpoint "http://127.0.0.1:$((PORT + 1))" \
        --state-dir "$state" "${args[@]}" ${EXTRA:--q} 2>&1 | grep -E "${SHOW:-^[|]}" || true
    n=$(find "$work/fs/bench/$mode" -type f | wc -l)
    [ "$n" -eq "$FILES" ] || { echo "only $n of $FILES objects on the server" >&2; exit 1; }
done
