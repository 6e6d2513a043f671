# Sourced by the garage benchmarks: garage_start WORK PORT starts a
# one-node garage (S3 API on 127.0.0.1:PORT, RPC on PORT+1, admin on
# PORT+3) with its files under WORK, sets G (the garage command with its
# config) and garage_pid, and exports the credentials of a new key.
# garage_bucket NAME makes a bucket that key owns. Sourcing it finds garage
# (GARAGE, or on PATH) and the s3ma binary (S3MA, built if missing) as BIN.

BIN=${S3MA:-target/release/s3ma}
GARAGE=${GARAGE:-$(command -v garage || true)}
[ -x "$GARAGE" ] || { echo "garage not found: set GARAGE=/path/to/garage" >&2; exit 1; }
[ -x "$BIN" ] || cargo build --release --locked

garage_start() {
    local work=$1 port=$2
    cat >"$work/garage.toml" <<TOML
metadata_dir = "$work/meta"
data_dir = "$work/data"
db_engine = "sqlite"
replication_factor = 1
rpc_bind_addr = "127.0.0.1:$((port + 1))"
rpc_public_addr = "127.0.0.1:$((port + 1))"
rpc_secret = "$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n')"
[s3_api]
s3_region = "garage"
api_bind_addr = "127.0.0.1:$port"
root_domain = ".s3.garage.localhost"
[admin]
api_bind_addr = "127.0.0.1:$((port + 3))"
TOML
    G=("$GARAGE" -c "$work/garage.toml")
    "${G[@]}" server >"$work/garage.log" 2>&1 &
    garage_pid=$!
    for _ in $(seq 100); do "${G[@]}" status >/dev/null 2>&1 && break; sleep 0.2; done
    local node keys
    node=$("${G[@]}" node id -q | cut -d@ -f1)
    "${G[@]}" layout assign -z dc1 -c 10G "$node" >/dev/null
    "${G[@]}" layout apply --version 1 >/dev/null
    keys=$("${G[@]}" key create bench)
    AWS_ACCESS_KEY_ID=$(echo "$keys" | awk '/Key ID/ {print $3}')
    AWS_SECRET_ACCESS_KEY=$(echo "$keys" | awk '/Secret key/ {print $3}')
    export AWS_ACCESS_KEY_ID AWS_SECRET_ACCESS_KEY AWS_DEFAULT_REGION=garage
    # rclone's SDK cannot use a CA bundle with its own transport (and none
    # is needed over http).
    unset AWS_CA_BUNDLE
}

garage_bucket() {
    "${G[@]}" bucket create "$1" >/dev/null
    "${G[@]}" bucket allow --read --write --owner "$1" --key bench >/dev/null
}
