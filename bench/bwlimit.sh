#!/usr/bin/env bash
# Measures --bwlimit: one file of BENCH_BW_MIB MiB (default 256) uploaded
# to a fresh s3s-fs at --bwlimit BENCH_BW_RATE (default 20M); prints the
# time taken and the time the rate alone allows (size / rate).
#
#   bench/bwlimit.sh                    # release build of the work tree
#   BENCH_S3MA_BIN=target/debug/s3ma bench/bwlimit.sh
set -euo pipefail
REPO="$(cd "$(dirname "$0")/.." && pwd)"
cd "$REPO"
MIB="${BENCH_BW_MIB:-256}"
RATE="${BENCH_BW_RATE:-20M}"
export PATH="$HOME/.cargo/bin:$PATH"
BIN="${BENCH_S3MA_BIN:-}"
if [ -z "$BIN" ]; then
    cargo build --release --locked --quiet
    BIN="$REPO/target/release/s3ma"
fi
command -v s3s-fs >/dev/null || ./scripts/setup-test-env.sh
T="$(mktemp -d)"
server=""
cleanup() {
    [ -n "$server" ] && kill "$server" 2>/dev/null && { wait "$server" || true; }
    rm -rf "$T"
}
trap cleanup EXIT
mkdir -p "$T/fs/bench-bw" "$T/src"
head -c "$((MIB << 20))" /dev/urandom >"$T/src/big.bin"
port="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')"
s3s-fs --host 127.0.0.1 --port "$port" --access-key bench --secret-key bench-secret "$T/fs" \
    >"$T/server.log" 2>&1 &
server=$!
for _ in $(seq 100); do
    (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break
    sleep 0.1
done
t0="$EPOCHREALTIME"
env -i PATH="$PATH" HOME="$T" AWS_ACCESS_KEY_ID=bench AWS_SECRET_ACCESS_KEY=bench-secret \
    S3MA_STATE_DIR="$T/state" "$BIN" sync "$T/src" s3://bench-bw/ \
    --endpoint "http://127.0.0.1:$port" --bwlimit "$RATE" -q
t1="$EPOCHREALTIME"
cmp "$T/src/big.bin" "$T/fs/bench-bw/big.bin"
python3 - "$t0" "$t1" "$MIB" "$RATE" <<'PY'
import sys
t0, t1, mib, rate = float(sys.argv[1]), float(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
unit = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
r = float(rate[:-1]) * unit[rate[-1].upper()] if rate[-1].isalpha() else float(rate)
ideal = mib * (1 << 20) / r
took = t1 - t0
print(f"{mib} MiB at --bwlimit {rate}: {took:.2f} s (the rate alone: {ideal:.2f} s, "
      f"{100 * (took - ideal) / ideal:+.1f} %)")
PY
