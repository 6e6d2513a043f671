#!/usr/bin/env bash
# The main job on a built-in default: builds s3ma, starts a local s3s-fs
# server, mirrors examples/site into s3://demo/site/, runs the sync again
# (nothing to do), and lists the bucket. Leaves nothing running.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"

S3S_FS_VERSION=0.14.1
s3s_fs="$(command -v s3s-fs || true)"
[ -n "$s3s_fs" ] || s3s_fs="$HOME/.cargo/bin/s3s-fs"
if [ ! -x "$s3s_fs" ]; then
    echo "demo: installing s3s-fs $S3S_FS_VERSION with cargo (a few minutes, once)"
    cargo install s3s-fs --version "$S3S_FS_VERSION" --features binary --locked
fi
cargo build --release --locked
s3ma="$root/target/release/s3ma"

work="$(mktemp -d)"
port="${S3MA_DEMO_PORT:-18014}"
mkdir -p "$work/data/demo"   # s3s-fs keeps each bucket as a directory
"$s3s_fs" --host 127.0.0.1 --port "$port" --access-key demo-key --secret-key demo-secret \
    "$work/data" >"$work/s3s-fs.log" 2>&1 &
server=$!
trap 'kill $server 2>/dev/null; wait $server 2>/dev/null || true; rm -rf "$work"' EXIT
for _ in $(seq 100); do
    (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break
    sleep 0.1
done

export AWS_ACCESS_KEY_ID=demo-key AWS_SECRET_ACCESS_KEY=demo-secret
export S3MA_STATE_DIR="$work/state"
endpoint="http://127.0.0.1:$port"
cd "$work"   # no conf/config.json here: flags and the environment only

echo "\$ s3ma sync examples/site s3://demo/site --endpoint $endpoint"
"$s3ma" sync "$root/examples/site" s3://demo/site --endpoint "$endpoint"
echo
echo "\$ s3ma sync examples/site s3://demo/site --endpoint $endpoint   # again: nothing to do"
"$s3ma" sync "$root/examples/site" s3://demo/site --endpoint "$endpoint"
echo
echo "\$ s3ma ls --endpoint $endpoint"
"$s3ma" ls --endpoint "$endpoint"
echo
echo "\$ s3ma ls s3://demo/site/ --recursive --endpoint $endpoint"
"$s3ma" ls s3://demo/site/ --recursive --endpoint "$endpoint"
