#!/usr/bin/env bash
# Large-tree cases against garage, which keeps an index of its keys (unlike
# s3s-fs, which walks its directory for every listing):
#   1. initial upload of FILES (default 100,000) files of 1 KiB, s3ma and
#      rclone --transfers 32;
#   2. the no-op sync of that tree through bench/latency-proxy.py (+RTT_MS,
#      default 35 ms): s3ma, s3ma --trust-state, rclone --fast-list (which
#      asks each object for its mtime), and aws s3 sync when installed.
# PEERS="rclone aws" (the default) says which peers run.
# garage is built with
#   cargo install garage --no-default-features --features bundled-libs,sqlite --locked
# (slow: about 40 minutes on 2 cores), and looked for as GARAGE or on PATH.
set -euo pipefail
cd "$(dirname "$0")/.."
FILES=${FILES:-100000}
RTT_MS=${RTT_MS:-35}
. bench/garage-lib.sh
work=$(mktemp -d)
garage_start "$work" 3910
python3 bench/latency-proxy.py 3915 127.0.0.1:3910 "$RTT_MS" &
proxy=$!
trap 'kill $garage_pid $proxy 2>/dev/null || true; rm -rf "$work"' EXIT
for b in s3ma rclone aws; do
    garage_bucket "$b"
done
python3 - "$work/tree" "$FILES" <<'PY'
import os, sys
root, n = sys.argv[1], int(sys.argv[2])
for i in range(n):
    d = os.path.join(root, f"d{i // 1000:04}")
    if i % 1000 == 0:
        os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, f"f{i:07}.txt"), "wb") as f:
        f.write(os.urandom(1024))
PY
direct=http://127.0.0.1:3910
slow=http://127.0.0.1:3915
rc=(rclone --config /dev/null --s3-provider Other --s3-env-auth --s3-region garage --s3-force-path-style -q)
row() { /usr/bin/time -f "| $1 | %e s | %U+%S s | %M KiB |" "${@:2}" 2>&1 >/dev/null | grep '^|'; }
echo "| case | wall | CPU | peak RSS |"
echo "|---|--:|--:|--:|"
st="$work/state"
row "initial, s3ma" "$BIN" sync "$work/tree" s3://s3ma/t/ --endpoint "$direct" --region garage --state-dir "$st" -q
PEERS=${PEERS:-rclone aws}
peer() { case " $PEERS " in *" $1 "*) return 0 ;; *) return 1 ;; esac; }
peer rclone && row "initial, rclone --transfers 32" "${rc[@]}" --s3-endpoint "$direct" --transfers 32 --checkers 32 sync "$work/tree" :s3:rclone/t
# The state database is per endpoint: the first run through the proxy
# starts with none, and hashes each file against its listed ETag.
row "first sync, empty state database, +${RTT_MS} ms, s3ma" "$BIN" sync "$work/tree" s3://s3ma/t/ --endpoint "$slow" --region garage --state-dir "$st" -q
row "no-op +${RTT_MS} ms, s3ma" "$BIN" sync "$work/tree" s3://s3ma/t/ --endpoint "$slow" --region garage --state-dir "$st" -q
row "no-op +${RTT_MS} ms, s3ma --trust-state" "$BIN" sync "$work/tree" s3://s3ma/t/ --endpoint "$slow" --region garage --state-dir "$st" -q --trust-state
peer rclone && row "no-op +${RTT_MS} ms, rclone --fast-list" "${rc[@]}" --s3-endpoint "$slow" --fast-list --checkers 32 sync "$work/tree" :s3:rclone/t
if peer aws && command -v aws >/dev/null && aws --version >/dev/null 2>&1; then
    # Filled by s3ma (aws-cli would take many minutes): aws s3 sync
    # compares sizes and times from the listing.
    "$BIN" sync "$work/tree" s3://aws/t/ --endpoint "$direct" --region garage \
        --state-dir "$work/state-aws" -q
    row "no-op +${RTT_MS} ms, aws s3 sync" aws --endpoint-url "$slow" s3 sync --only-show-errors "$work/tree" s3://aws/t
fi
