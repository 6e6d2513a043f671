#!/usr/bin/env bash
# Restore speed against its peers, on s3s-fs: a tree of SMALL files of
# 4 KiB (default 5,000) and one file of BIG_MIB (default 256) is synced,
# then brought back into an empty directory by s3ma restore, rclone copy
# (--transfers 32 --checkers 32) and aws s3 sync (defaults), each then run
# again on the restored tree (a no-op). Each restored tree is compared with
# the source (diff -r). Prints wall seconds per run.
set -euo pipefail
cd "$(dirname "$0")/.."
SMALL=${SMALL:-5000}
BIG_MIB=${BIG_MIB:-256}
BIN=${S3MA:-target/release/s3ma}
S3S_FS=${S3S_FS:-$(command -v s3s-fs || echo "$HOME/.cargo/bin/s3s-fs")}
[ -x "$BIN" ] || cargo build --release --locked
work=$(mktemp -d)
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
mkdir -p "$work/server/bench"
"$S3S_FS" --host 127.0.0.1 --port "$port" --access-key bench --secret-key benchsecret \
    "$work/server" >"$work/s3s-fs.log" 2>&1 &
server=$!
trap 'kill $server 2>/dev/null || true; rm -rf "$work"' EXIT
for _ in $(seq 200); do (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break; sleep 0.05; done
ep=http://127.0.0.1:$port
export AWS_ACCESS_KEY_ID=bench AWS_SECRET_ACCESS_KEY=benchsecret AWS_DEFAULT_REGION=us-east-1
export AWS_EC2_METADATA_DISABLED=true
unset AWS_CA_BUNDLE
python3 - "$work/tree" "$SMALL" "$BIG_MIB" <<'PY'
import os, random, sys
root, n, big = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
rnd = random.Random(5)
for i in range(n):
    d = os.path.join(root, f"d{i % 50}")
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, f"f{i:05}.bin"), "wb") as f:
        f.write(rnd.randbytes(4096))
with open(os.path.join(root, "big.bin"), "wb") as f:
    for _ in range(big):
        f.write(rnd.randbytes(1 << 20))
PY
"$BIN" sync "$work/tree" s3://bench/site --endpoint "$ep" --state-dir "$work/state" -q
export RCLONE_CONFIG_BENCH_TYPE=s3 RCLONE_CONFIG_BENCH_PROVIDER=Other \
    RCLONE_CONFIG_BENCH_ENDPOINT=$ep RCLONE_CONFIG_BENCH_ACCESS_KEY_ID=bench \
    RCLONE_CONFIG_BENCH_SECRET_ACCESS_KEY=benchsecret RCLONE_CONFIG_BENCH_FORCE_PATH_STYLE=true \
    RCLONE_CONFIG=$work/rclone.conf
: >"$work/rclone.conf"
run() { # label, dir, command...
    local label=$1 dir=$2; shift 2
    local t0=$EPOCHREALTIME
    "$@" >/dev/null
    printf '%-40s %7.2f s\n' "$label" "$(echo "$EPOCHREALTIME - $t0" | bc)"
    diff -r "$work/tree" "$dir" >/dev/null || echo "  $dir differs from the tree"
}
echo "$SMALL files of 4 KiB and one of $BIG_MIB MiB from s3s-fs $("$S3S_FS" --version | awk '{print $2}'), $(nproc) cores"
for pass in first again; do
    run "s3ma restore ($pass)" "$work/s3ma" "$BIN" restore s3://bench/site "$work/s3ma" --endpoint "$ep" -q
    if command -v rclone >/dev/null; then
        run "rclone copy, 32 transfers ($pass)" "$work/rclone" rclone copy bench:bench/site "$work/rclone" \
            --transfers 32 --checkers 32
    fi
    if command -v aws >/dev/null; then
        run "aws s3 sync ($pass)" "$work/aws" aws s3 sync s3://bench/site "$work/aws" \
            --endpoint-url "$ep" --only-show-errors
    fi
done
