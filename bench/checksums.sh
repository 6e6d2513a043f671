#!/usr/bin/env bash
# One large file (BIG_MIB, default 256 MiB) uploaded by s3ma three ways,
# RUNS times each (default 3), to garage, which has AWS's flexible
# checksums (s3s-fs does not confirm those of parts):
#   md5     the default: Content-MD5 on each part, md5chksum of the file;
#   crc32c  --checksum-algorithm CRC32C: each part's CRC32C instead of its
#           MD5, the whole file's CRC32C on completion, md5chksum kept;
#   sha256  --checksum-algorithm SHA256;
# and aws s3 cp (defaults) of the same file when aws-cli is installed.
# Prints wall seconds and s3ma's CPU seconds (user + system) per run.
# garage is looked for as GARAGE or on PATH (see bench/garage.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
BIG_MIB=${BIG_MIB:-256}
RUNS=${RUNS:-3}
. bench/garage-lib.sh
work=$(mktemp -d)
garage_start "$work" 3920
trap 'kill $garage_pid 2>/dev/null || true; rm -rf "$work"' EXIT
garage_bucket big
mkdir -p "$work/tree"
head -c $((BIG_MIB << 20)) /dev/urandom >"$work/tree/big.bin"
echo "one file of $BIG_MIB MiB to garage $("$GARAGE" --version 2>/dev/null | head -1 | awk '{print $2}'), $(nproc) cores"
for run in $(seq "$RUNS"); do
    for how in md5 crc32c sha256 $(command -v aws >/dev/null && echo aws); do
        if [ "$how" = aws ]; then
            /usr/bin/time -o "$work/time" -f '%e %U %S' aws s3 cp --only-show-errors \
                --endpoint-url http://127.0.0.1:3920 "$work/tree/big.bin" \
                "s3://big/aws-$run/big.bin"
            read -r wall user sys <"$work/time"
            printf '%-7s run %d: %6.2f s wall, %5.2f s CPU (aws s3 cp, defaults)\n' aws "$run" \
                "$wall" "$(echo "$user + $sys" | bc)"
            continue
        fi
        case $how in
            md5) extra=() ;;
            crc32c) extra=(--checksum-algorithm CRC32C) ;;
            sha256) extra=(--checksum-algorithm SHA256) ;;
        esac
        prefix="$how-$run"
        if ! /usr/bin/time -o "$work/time" -f '%e %U %S' "$BIN" sync "$work/tree" \
            "s3://big/$prefix/" --endpoint http://127.0.0.1:3920 \
            --state-dir "$work/state-$prefix" -q "${extra[@]}" 2>"$work/err"; then
            printf '%-7s run %d: failed: %s\n' "$how" "$run" "$(tail -1 "$work/err")"
            continue
        fi
        read -r wall user sys <"$work/time"
        printf '%-7s run %d: %6.2f s wall, %5.2f s CPU\n' "$how" "$run" "$wall" \
            "$(echo "$user + $sys" | bc)"
    done
done
