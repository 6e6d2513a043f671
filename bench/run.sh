#!/usr/bin/env bash
# bench/run.sh: s3ma against its peers (rclone, aws-cli, s3cmd) on a local
# s3s-fs server. A benchmark, not a test: nothing in the test suite calls it.
#
# Usage (from anywhere; a fresh Debian machine with the Rust toolchain):
#
#     bench/run.sh
#
# What it does:
#   1. installs what is missing: rclone, s3cmd and `time` from Debian
#      (apt-get, through sudo unless root), awscli from PyPI into bench/.venv,
#      and s3s-fs through scripts/setup-test-env.sh;
#   2. builds s3ma with `cargo build --release --locked` (reusing target/);
#   3. generates the data sets in a temporary directory;
#   4. for every tool and data set, starts a fresh s3s-fs server on a free
#      loopback port (stopped again on exit), runs the cases below, each
#      timed with /usr/bin/time, and checks the bucket afterwards;
#   5. writes one markdown table per case to docs/benchmarks-peers.md and
#      prints it.
#
# Cases:
#   1   initial upload of BENCH_SMALL files of 4 KiB (100 per directory)
#   2   the same sync again, nothing changed (no-op)
#   3   sync after rewriting 1% of those files with new content
#   4   initial upload of one file of BENCH_BIG_MIB MiB
#   5a  initial upload of BENCH_HUGE files of 1 KiB (nested 2 levels)
#   5b  the same sync again (no-op)
#
# Tools (ids for BENCH_TOOLS and BENCH_PEERS_HUGE):
#   s3ma      s3ma sync, defaults
#   rclone    rclone sync, defaults
#   rclone32  rclone sync --transfers 32 --checkers 32
#   aws       aws s3 sync, defaults
#   aws32     aws s3 sync with s3.max_concurrent_requests = 32
#   s3cmd     s3cmd sync, defaults
#
# Environment (all optional):
#   BENCH_SMALL=5000       number of 4 KiB files for cases 1-3
#   BENCH_BIG_MIB=256      size of the single file of case 4, in MiB
#   BENCH_HUGE=100000      number of 1 KiB files for case 5
#   BENCH_TOOLS="s3ma rclone rclone32 aws aws32 s3cmd"
#                          tools to run (s3ma is always run: it is the baseline)
#   BENCH_PEERS_HUGE="rclone rclone32 aws aws32 s3cmd"
#                          peers that run case 5 (s3ma always does); the
#                          others get a "skipped" row
#   BENCH_SKIP_REASON      why peers were left out of case 5 (goes in the notes)
#   BENCH_CASES="small big huge"
#                          data sets to run: small (cases 1-3), big (case 4),
#                          huge (case 5)
#   BENCH_TIMEOUT=1200     seconds before one tool run is killed (row: timed out)
#   BENCH_OUT=docs/benchmarks-peers.md
#                          where the tables are written
#   BENCH_TMP              work directory (default: a new one from mktemp)
#   BENCH_KEEP=1           keep the work directory and the logs
#   BENCH_S3MA_REV=REV     benchmark this committed revision instead of the
#                          work tree (exported with git archive, built in
#                          target/bench-rev): for when the work tree is
#                          mid-edit and does not build
#   BENCH_S3MA_BIN=PATH    benchmark this s3ma binary, build nothing
#   BENCH_REPORT_FROM=DIR  only write the tables again, from the work
#                          directory of a run kept with BENCH_KEEP=1
#
# The run kept in docs/benchmarks-peers.md (about 17 minutes on 2 CPUs; the
# aws-cli and s3cmd runs of case 5 would add over 30 more):
#   BENCH_PEERS_HUGE="rclone rclone32" bench/run.sh
#
# A quick smoke test:
#   BENCH_SMALL=200 BENCH_HUGE=1000 BENCH_BIG_MIB=8 BENCH_OUT=/tmp/b.md bench/run.sh
#
# Notes on the method:
#   - every tool and data set gets its own s3s-fs process with an empty root,
#     so no tool pays for objects left by another; the data sets are written
#     just before and sit in the page cache for every tool alike;
#   - s3s-fs keeps each object as a plain file ROOT/BUCKET/KEY, so the check
#     after a run compares the source tree with that directory (diff -r), and
#     "objects written" counts the files the server wrote during the run;
#   - every tool syncs into a bucket root: rclone probes a destination
#     prefix with HEAD, which s3s-fs answers with 500 once the prefix is a
#     directory on its disk, and rclone's retries cost ~85 s per run;
#   - every tool runs with an empty environment (env -i) plus its own
#     settings, HOME in the work directory and the work directory as cwd, so
#     neither ~/.aws, ~/.s3cfg nor rclone.conf is read.
set -euo pipefail

REPO="$(cd "$(dirname "$0")/.." && pwd)"
cd "$REPO"

BENCH_SMALL="${BENCH_SMALL:-5000}"
BENCH_BIG_MIB="${BENCH_BIG_MIB:-256}"
BENCH_HUGE="${BENCH_HUGE:-100000}"
ALL_PEERS="rclone rclone32 aws aws32 s3cmd"
BENCH_TOOLS="${BENCH_TOOLS:-s3ma $ALL_PEERS}"
BENCH_PEERS_HUGE="${BENCH_PEERS_HUGE:-$ALL_PEERS}"
BENCH_SKIP_REASON="${BENCH_SKIP_REASON:-left out by BENCH_PEERS_HUGE to keep the run short}"
BENCH_CASES="${BENCH_CASES:-small big huge}"
BENCH_TIMEOUT="${BENCH_TIMEOUT:-1200}"
BENCH_OUT="${BENCH_OUT:-$REPO/docs/benchmarks-peers.md}"
BENCH_KEEP="${BENCH_KEEP:-0}"

ACCESS_KEY="s3ma-bench-key"
SECRET_KEY="s3ma-bench-secret-Xk4pQ7"
REGION="us-east-1"
SMALL_KIB=4
HUGE_KIB=1

# The command line as given, for the report.
BENCH_COMMAND="BENCH_SMALL=$BENCH_SMALL BENCH_BIG_MIB=$BENCH_BIG_MIB BENCH_HUGE=$BENCH_HUGE"
[ "$BENCH_PEERS_HUGE" = "$ALL_PEERS" ] || BENCH_COMMAND+=" BENCH_PEERS_HUGE=\"$BENCH_PEERS_HUGE\""
[ "$BENCH_TOOLS" = "s3ma $ALL_PEERS" ] || BENCH_COMMAND+=" BENCH_TOOLS=\"$BENCH_TOOLS\""
[ "$BENCH_CASES" = "small big huge" ] || BENCH_COMMAND+=" BENCH_CASES=\"$BENCH_CASES\""
[ -z "${BENCH_S3MA_REV:-}" ] || BENCH_COMMAND+=" BENCH_S3MA_REV=$BENCH_S3MA_REV"
[ -z "${BENCH_S3MA_BIN:-}" ] || BENCH_COMMAND+=" BENCH_S3MA_BIN=$BENCH_S3MA_BIN"
BENCH_COMMAND+=" bench/run.sh"

log() { printf 'bench: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

# Whether the word $1 is in the space-separated list $2.
in_list() { case " $2 " in *" $1 "*) return 0 ;; *) return 1 ;; esac; }

# write_report DIR OUT: the markdown tables from DIR/meta.txt, DIR/labels.tsv
# and DIR/results.tsv.
write_report() {
    mkdir -p "$(dirname "$2")"
    python3 - "$1/meta.txt" "$1/labels.tsv" "$1/results.tsv" >"$2" <<'PY'
import sys

meta = dict(l.rstrip("\n").split("=", 1) for l in open(sys.argv[1]) if "=" in l)
labels = dict(l.rstrip("\n").split("\t", 1) for l in open(sys.argv[2]))
rows = [l.rstrip("\n").split("\t") for l in open(sys.argv[3]) if l.strip()]
while rows and len(rows[-1]) < 9:
    rows.pop()

small, huge = int(meta["small"]), int(meta["huge"])
big_mib = int(meta["big_mib"])
cases = [
    ("1", f"Case 1: initial upload of {small:,} files of {meta['small_kib']} KiB "
          f"({-(-small // 100)} directories)", "files", small, small),
    ("2", f"Case 2: the same sync again, nothing changed ({small:,} files)", "files", small, 0),
    ("3", f"Case 3: sync after rewriting 1% of the files with new content "
          f"({meta['rewritten']} of {small:,})", "files", small, int(meta["rewritten"])),
    ("4", f"Case 4: initial upload of one {big_mib} MiB file", "mib", big_mib, 1),
    ("5a", f"Case 5a: initial upload of {huge:,} files of {meta['huge_kib']} KiB "
           "(nested 2 levels, 100 per directory)", "files", huge, huge),
    ("5b", f"Case 5b: the same sync again, nothing changed ({huge:,} files)", "files", huge, 0),
]

out = []
w = out.append
w("# s3ma and its peers: sync benchmarks")
w("")
w("Produced by `bench/run.sh`; do not edit by hand, run it again.")
w("")
w(f"- Date: {meta['date']}")
w(f"- Machine: {meta['nproc']} CPUs, {meta['cpu']}, {meta['mem']} RAM, "
  f"{meta['kernel']}, {meta['os']}")
w(f"- Load before the run: {meta['load']}"
  + (f"; after it: {meta['load_after']}" if "load_after" in meta else ""))
w(f"- s3ma: {meta['version_s3ma']}, {meta['commit']}")
for key, name in (("version_rclone", "rclone"), ("version_aws", "aws-cli"),
                  ("version_s3cmd", "s3cmd")):
    if key in meta:
        w(f"- {name}: {meta[key]}")
w(f"- Server: {meta['server']}")
w(f"- Command: `{meta['command']}`")
w(f"- Total time of the run: {int(meta['total_s']) // 60} min {int(meta['total_s']) % 60} s")
w("")
w("Each number is one run. **wall** is elapsed time; **rate** is files in the "
  "tree per second of wall time (MiB/s for case 4); **CPU** is user + system "
  "time of the tool; **RSS** its peak resident memory; **written** the number "
  "of objects the server wrote during the run (read from s3s-fs's directory, "
  "independent of the tool); **s3ma speed-up** is the peer's wall time divided "
  "by s3ma's (above 1: s3ma is faster). After every upload the bucket was "
  "compared with the source tree byte for byte (`diff -r` against s3s-fs's "
  "directory); **check** says `ok`, or what was wrong.")
w("")

def f(x, nd=2):
    return f"{x:.{nd}f}"

for cid, title, unit, amount, expect in cases:
    crow = [r for r in rows if r[0] == cid]
    if not crow:
        continue
    w(f"## {title}")
    w("")
    w("| tool and settings | wall s | " + ("MiB/s" if unit == "mib" else "files/s")
      + " | CPU s | RSS MiB | written | s3ma speed-up | check |")
    w("|---|--:|--:|--:|--:|--:|--:|---|")
    base = next((r for r in crow if r[1] == "s3ma" and r[2] == "ok"), None)
    base_wall = float(base[3]) if base else None
    for case_id, tool, status, wall, user, sys_, rss, written, note in crow:
        name = labels.get(tool, tool)
        if status == "skipped":
            w(f"| {name} | not run | | | | | | skipped, see the notes |")
            continue
        wall_f = float(wall)
        cpu = float(user) + float(sys_)
        rate = amount / wall_f if wall_f > 0 else 0
        rate_s = f(rate, 1) if unit == "mib" else f"{rate:,.0f}"
        if tool == "s3ma":
            speed = "1.00 (baseline)"
        elif base_wall and status in ("ok", "wrong"):
            speed = f"{wall_f / base_wall:.2f}×"
        else:
            speed = "n/a"
        check = "ok" if status == "ok" else status
        if note:
            check = f"{check}: {note}" if status != "ok" else f"ok; {note}"
        if status in ("failed", "timed out"):
            w(f"| {name} | {status} ({f(wall_f, 1)}) | | {f(cpu)} | {int(rss) / 1024:.0f} "
              f"| {written} | {speed} | {check} |")
        else:
            w(f"| {name} | {f(wall_f)} | {rate_s} | {f(cpu)} | {int(rss) / 1024:.0f} "
              f"| {written} | {speed} | {check} |")
    w("")

w("## Notes")
w("")
w("- Every tool syncs into the root of a bucket. rclone first asks with HEAD "
  "whether the destination prefix is itself an object; s3s-fs answers that "
  "HEAD with 500 when the prefix is a directory on its disk (it is, once "
  "objects exist under it), and rclone's retries of that one request cost "
  "about 85 s per run. A bucket root has no such probe, for any tool.")
w("- s3s-fs puts no ETag in its listings. s3cmd sync reads the ETag of every "
  "listed object and stops with `KeyError: 'ETag'` as soon as the bucket "
  "holds objects, so with this server it can only do initial uploads.")
w("- s3s-fs answers every page of a listing by walking and stat-ing the whole "
  "bucket directory, so listing N keys flat, P per request, costs about "
  "N²/P file stats. aws-cli lists the destination flat, 1,000 keys per "
  "request; s3ma lists it flat too but asks for 10,000 keys per request "
  "(AWS S3 returns at most 1,000 whatever is asked; s3s-fs returns them "
  "all); rclone lists one directory at a time (delimiter `/`), which "
  "s3s-fs answers from that directory alone. The no-op of case 5b is "
  "mostly that listing; on AWS S3 a page costs the same at any offset.")
w("- rclone's defaults compare size and modification time, and it reads an "
  "object's modification time from its metadata with one HEAD per object; "
  "aws-cli compares size and the listing's LastModified; s3ma compares size "
  "and mtime with its state database and sends no request per file.")
w("- The server runs on the same machine and shares its CPUs with the tool: "
  "the upload rates are bounded by s3s-fs as much as by the tools.")
w("- One run per number: differences under about 20% are within run-to-run "
  "noise on this machine, case 4 especially, which is bound by s3s-fs "
  "writing the file (and joining the parts of a multipart upload). The "
  "source trees were written just before and were in the page cache for "
  "every tool alike; dirty pages were written back (`sync`) before each "
  "run. Every tool ran with an empty "
  "environment (`env -i`) plus its own settings and a scratch HOME.")
skipped = [labels.get(r[1], r[1]) for r in rows if r[2] == "skipped" and r[0] == "5a"]
if skipped:
    w(f"- Left out of case 5: {', '.join(skipped)} "
      f"({next(r[8] for r in rows if r[2] == 'skipped')}).")
print("\n".join(out))
PY
}

# Only the report, from the files of a kept run (BENCH_KEEP=1).
if [ -n "${BENCH_REPORT_FROM:-}" ]; then
    write_report "$BENCH_REPORT_FROM" "$BENCH_OUT"
    cat "$BENCH_OUT"
    exit 0
fi

# ---------------------------------------------------------------------------
# 1. Peers and helpers
# ---------------------------------------------------------------------------

as_root() {
    if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi
}

APT_UPDATED=0
apt_install() {
    command -v apt-get >/dev/null || die "please install $* (no apt-get here)"
    log "installing $* with apt-get"
    if [ "$APT_UPDATED" = 0 ]; then
        as_root apt-get update -qq
        APT_UPDATED=1
    fi
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

missing=()
command -v python3 >/dev/null || missing+=(python3 python3-venv)
[ -x /usr/bin/time ] || missing+=(time)
if in_list rclone "$BENCH_TOOLS" || in_list rclone32 "$BENCH_TOOLS"; then
    command -v rclone >/dev/null || missing+=(rclone)
fi
if in_list s3cmd "$BENCH_TOOLS"; then
    command -v s3cmd >/dev/null || missing+=(s3cmd)
fi
[ "${#missing[@]}" = 0 ] || apt_install "${missing[@]}"

# aws-cli from PyPI, in its own venv (never a system or pyenv one).
VENV="$REPO/bench/.venv"
AWS="$VENV/bin/aws"
if { in_list aws "$BENCH_TOOLS" || in_list aws32 "$BENCH_TOOLS"; } && ! "$AWS" --version >/dev/null 2>&1; then
    rm -rf "$VENV"
    if ! python3 -m venv "$VENV" >/dev/null 2>&1; then
        # Debian's python3 needs python3-venv for ensurepip.
        rm -rf "$VENV"
        apt_install python3-venv
        python3 -m venv "$VENV"
    fi
    log "installing awscli from PyPI into bench/.venv"
    "$VENV/bin/pip" install --quiet --disable-pip-version-check awscli
fi

# s3s-fs, the server the tests use; setup-test-env.sh installs it.
find_s3s_fs() {
    local p
    p="$(command -v s3s-fs || true)"
    [ -n "$p" ] || p="$HOME/.cargo/bin/s3s-fs"
    [ -x "$p" ] && printf '%s\n' "$p"
}
S3S_FS="$(find_s3s_fs || true)"
if [ -z "$S3S_FS" ]; then
    log "s3s-fs not found: running scripts/setup-test-env.sh"
    ./scripts/setup-test-env.sh
    S3S_FS="$(find_s3s_fs)" || die "s3s-fs still not found"
fi

# ---------------------------------------------------------------------------
# 2. s3ma, release build
# ---------------------------------------------------------------------------

if [ -n "${BENCH_S3MA_BIN:-}" ]; then
    # A binary built elsewhere: no build.
    S3MA="$BENCH_S3MA_BIN"
    S3MA_FROM="prebuilt binary $S3MA"
elif [ -n "${BENCH_S3MA_REV:-}" ]; then
    # A committed revision, exported with git archive (the work tree and the
    # index are not touched) and built in its own target/bench-rev.
    rev="$(git rev-parse --short "$BENCH_S3MA_REV^{commit}")" || die "no revision $BENCH_S3MA_REV"
    rev_src="$REPO/target/bench-rev/src-$rev"
    if [ ! -f "$rev_src/Cargo.toml" ]; then
        rm -rf "$rev_src"
        mkdir -p "$rev_src"
        git archive "$rev" | tar -x -C "$rev_src"
    fi
    log "building s3ma $rev (cargo build --release --locked, in target/bench-rev)"
    (cd "$rev_src" && CARGO_TARGET_DIR="$REPO/target/bench-rev" cargo build --release --locked)
    S3MA="$REPO/target/bench-rev/release/s3ma"
    S3MA_FROM="release build of commit $rev"
else
    log "building s3ma (cargo build --release --locked)"
    cargo build --release --locked
    S3MA="$REPO/target/release/s3ma"
    # What was built: the commit, and whether src/ differed from it then.
    S3MA_FROM="release build of the working tree at commit $(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
    if [ -n "$(git status --porcelain -- src Cargo.toml Cargo.lock 2>/dev/null)" ]; then
        S3MA_FROM+=", with uncommitted changes in src/"
    fi
fi
[ -x "$S3MA" ] || die "no s3ma binary at $S3MA"

# ---------------------------------------------------------------------------
# Work directory, server and cleanup
# ---------------------------------------------------------------------------

if [ -n "${BENCH_TMP:-}" ]; then
    T="$BENCH_TMP"
    mkdir -p "$T"
else
    T="$(mktemp -d "${TMPDIR:-/tmp}/s3ma-bench.XXXXXX")"
fi
WORK="$T/work"        # cwd of every tool run: no conf/ here
THOME="$T/home"       # HOME of every tool run
LOGS="$T/logs"
RESULTS="$T/results.tsv"
mkdir -p "$WORK" "$THOME" "$LOGS" "$T/bin"
: >"$RESULTS"
# A private copy: a rebuild of target/ during the run cannot swap the binary.
cp "$S3MA" "$T/bin/s3ma"
S3MA="$T/bin/s3ma"

SERVER_PID=""
SERVER_ROOT=""
PORT=""
ENDPOINT=""

stop_server() {
    if [ -n "$SERVER_PID" ]; then
        kill "$SERVER_PID" 2>/dev/null || true
        wait "$SERVER_PID" 2>/dev/null || true
        SERVER_PID=""
    fi
    if [ -n "$SERVER_ROOT" ]; then
        rm -rf "$SERVER_ROOT"
        SERVER_ROOT=""
    fi
}

cleanup() {
    stop_server
    if [ "$BENCH_KEEP" = 1 ]; then
        log "kept $T"
    else
        rm -rf "$T"
    fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# Starts s3s-fs with an empty root $T/server-NAME (flags as in
# tests/e2e/harness.rs) and waits until it accepts connections.
start_server() {
    local name="$1" i
    stop_server
    SERVER_ROOT="$T/server-$name"
    rm -rf "$SERVER_ROOT"
    mkdir -p "$SERVER_ROOT"
    PORT="$(free_port)"
    ENDPOINT="http://127.0.0.1:$PORT"
    "$S3S_FS" --host 127.0.0.1 --port "$PORT" \
        --access-key "$ACCESS_KEY" --secret-key "$SECRET_KEY" \
        "$SERVER_ROOT" >"$LOGS/s3s-fs-$name.log" 2>&1 </dev/null &
    SERVER_PID=$!
    for i in $(seq 1 200); do
        if (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null; then
            return 0
        fi
        kill -0 "$SERVER_PID" 2>/dev/null || break
        sleep 0.05
    done
    cat "$LOGS/s3s-fs-$name.log" >&2
    die "s3s-fs did not start on port $PORT (after $i tries)"
}

# With s3s-fs a bucket is a directory under its root.
make_bucket() { mkdir -p "$SERVER_ROOT/$1"; }

# ---------------------------------------------------------------------------
# 4. Data sets
# ---------------------------------------------------------------------------

# gen_tree DIR COUNT KIB LAYOUT: COUNT files of KIB KiB of random bytes.
# LAYOUT flat: dNNN/fNNNNN.dat, 100 files per directory;
# LAYOUT nested: NN/NN/NNNNNN.txt, 100 files per directory, 2 levels.
gen_tree() {
    python3 - "$@" <<'PY'
import os, sys
root, count, kib, layout = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
size = kib * 1024
made = set()
for i in range(count):
    if layout == "flat":
        rel = os.path.join("d%03d" % (i // 100), "f%05d.dat" % i)
    else:
        rel = os.path.join("%02d" % (i // 10000), "%02d" % ((i // 100) % 100), "%06d.txt" % i)
    d = os.path.join(root, os.path.dirname(rel))
    if d not in made:
        os.makedirs(d, exist_ok=True)
        made.add(d)
    with open(os.path.join(root, rel), "wb") as f:
        f.write(os.urandom(size))
PY
}

# gen_big FILE MIB: one file of MIB MiB of random bytes.
gen_big() {
    python3 - "$@" <<'PY'
import os, sys
path, mib = sys.argv[1], int(sys.argv[2])
os.makedirs(os.path.dirname(path), exist_ok=True)
chunk = os.urandom(1 << 20)
with open(path, "wb") as f:
    for i in range(mib):
        # A fresh first 16 bytes per MiB: no two MiB are alike.
        f.write(os.urandom(16) + chunk[16:])
PY
}

# rewrite_percent DIR: rewrites every 100th file (sorted order, at least one)
# with new random content of the same size; prints how many.
rewrite_percent() {
    python3 - "$1" <<'PY'
import os, sys
root = sys.argv[1]
files = sorted(os.path.join(d, f) for d, _, fs in os.walk(root) for f in fs)
chosen = files[::100] or files[:1]
for p in chosen:
    size = os.path.getsize(p)
    with open(p, "wb") as f:
        f.write(os.urandom(size))
print(len(chosen))
PY
}

DATA="$T/data"
SMALL_SRC="$DATA/small"
BIG_SRC="$DATA/big"
HUGE_SRC="$DATA/huge"
BIG_FILE="big-${BENCH_BIG_MIB}MiB.bin"
if in_list small "$BENCH_CASES"; then
    log "generating $BENCH_SMALL files of $SMALL_KIB KiB"
    gen_tree "$SMALL_SRC" "$BENCH_SMALL" "$SMALL_KIB" flat
fi
if in_list big "$BENCH_CASES"; then
    log "generating one file of $BENCH_BIG_MIB MiB"
    gen_big "$BIG_SRC/$BIG_FILE" "$BENCH_BIG_MIB"
fi
if in_list huge "$BENCH_CASES"; then
    log "generating $BENCH_HUGE files of $HUGE_KIB KiB"
    gen_tree "$HUGE_SRC" "$BENCH_HUGE" "$HUGE_KIB" nested
fi

# ---------------------------------------------------------------------------
# 5. Tools
# ---------------------------------------------------------------------------

label() {
    case "$1" in
        s3ma) echo "s3ma (defaults)" ;;
        rclone) echo "rclone sync (defaults)" ;;
        rclone32) echo "rclone sync --transfers 32 --checkers 32" ;;
        aws) echo "aws s3 sync (defaults)" ;;
        aws32) echo "aws s3 sync, max_concurrent_requests = 32" ;;
        s3cmd) echo "s3cmd sync (defaults)" ;;
        *) die "unknown tool $1" ;;
    esac
}

# Config files for aws-cli and s3cmd, written once the port is known.
write_tool_configs() {
    : >"$THOME/aws-default.cfg"
    printf '[default]\ns3 =\n    max_concurrent_requests = 32\n' >"$THOME/aws-32.cfg"
    cat >"$THOME/s3cmd.cfg" <<EOF
[default]
access_key = $ACCESS_KEY
secret_key = $SECRET_KEY
host_base = 127.0.0.1:$PORT
host_bucket = 127.0.0.1:$PORT
bucket_location = $REGION
use_https = False
signature_v2 = False
EOF
    : >"$THOME/rclone.conf"
}

# tool_cmd TOOL SRC BUCKET STATE: sets CMD to the full command line,
# environment included (env -i: nothing from the caller's environment).
CMD=()
tool_cmd() {
    local tool="$1" src="$2" bucket="$3" state="$4"
    local base=(env -i "PATH=$PATH" "HOME=$THOME" "LC_ALL=C.UTF-8" "TMPDIR=$T")
    case "$tool" in
        s3ma)
            CMD=("${base[@]}" "AWS_ACCESS_KEY_ID=$ACCESS_KEY" "AWS_SECRET_ACCESS_KEY=$SECRET_KEY"
                "AWS_EC2_METADATA_DISABLED=true"
                "$S3MA" sync "$src" "s3://$bucket" --endpoint "$ENDPOINT"
                --region "$REGION" --state-dir "$state")
            ;;
        rclone | rclone32)
            CMD=("${base[@]}" "RCLONE_CONFIG=$THOME/rclone.conf"
                RCLONE_CONFIG_BENCH_TYPE=s3 RCLONE_CONFIG_BENCH_PROVIDER=Other
                "RCLONE_CONFIG_BENCH_ENDPOINT=$ENDPOINT" "RCLONE_CONFIG_BENCH_REGION=$REGION"
                "RCLONE_CONFIG_BENCH_ACCESS_KEY_ID=$ACCESS_KEY"
                "RCLONE_CONFIG_BENCH_SECRET_ACCESS_KEY=$SECRET_KEY"
                RCLONE_CONFIG_BENCH_FORCE_PATH_STYLE=true
                rclone sync "$src" "bench:$bucket")
            [ "$tool" = rclone ] || CMD+=(--transfers 32 --checkers 32)
            ;;
        aws | aws32)
            local cfg="$THOME/aws-default.cfg"
            [ "$tool" = aws ] || cfg="$THOME/aws-32.cfg"
            CMD=("${base[@]}" "AWS_ACCESS_KEY_ID=$ACCESS_KEY" "AWS_SECRET_ACCESS_KEY=$SECRET_KEY"
                "AWS_DEFAULT_REGION=$REGION" "AWS_CONFIG_FILE=$cfg"
                "AWS_SHARED_CREDENTIALS_FILE=$THOME/no-credentials" "AWS_EC2_METADATA_DISABLED=true"
                "$AWS" s3 sync "$src" "s3://$bucket" --endpoint-url "$ENDPOINT")
            ;;
        s3cmd)
            CMD=("${base[@]}" s3cmd -c "$THOME/s3cmd.cfg" sync "$src/" "s3://$bucket/")
            ;;
        *) die "unknown tool $tool" ;;
    esac
}

# One result row, tab-separated:
# case tool status wall user sys rss_kib written note
record() {
    local IFS=$'\t'
    printf '%s\n' "$*" >>"$RESULTS"
}

# measure CASE TOOL SRC BUCKET STATE EXPECT_WRITTEN CHECK
# Runs the tool once under /usr/bin/time and `timeout`, then checks the
# bucket: CHECK=diff compares SRC with the bucket's directory; the number of
# objects the server wrote is compared with EXPECT_WRITTEN (empty: no check).
measure() {
    local case_id="$1" tool="$2" src="$3" bucket="$4" state="$5"
    local expect="$6" check="$7"
    local tag="$case_id-$tool" tf out rc=0 t0 t1 wall user sys rss status note="" written diffs
    local dest="$SERVER_ROOT/$bucket"
    tf="$LOGS/$tag.time"
    out="$LOGS/$tag.log"
    tool_cmd "$tool" "$src" "$bucket" "$state"
    printf '%q ' "${CMD[@]}" >"$LOGS/$tag.cmd"
    # Write back what the last run (or the data generation) left dirty,
    # so no tool pays for another's writes.
    sync
    touch "$T/marker"
    sleep 0.01
    log "case $case_id: $(label "$tool")"
    t0="$EPOCHREALTIME"
    (cd "$WORK" && /usr/bin/time -f '%e %U %S %M' -o "$tf" \
        timeout "$BENCH_TIMEOUT" "${CMD[@]}") >"$out" 2>&1 </dev/null || rc=$?
    t1="$EPOCHREALTIME"
    wall="$(python3 -c "print('%.3f' % ($t1 - $t0))")"
    read -r _ user sys rss < <(tail -n 1 "$tf" | grep -E '^[0-9.]+ [0-9.]+ [0-9.]+ [0-9]+$' || echo "0 0 0 0")
    written="$(find "$SERVER_ROOT/$bucket" -type f -newer "$T/marker" 2>/dev/null | wc -l)"
    if [ "$rc" = 124 ]; then
        status="timed out"
        note="killed after ${BENCH_TIMEOUT} s"
    elif [ "$rc" != 0 ]; then
        status="failed"
        # The last line that reads like an error, else the last line.
        note="$( { grep -E '^(Problem|ERROR|Error|error|fatal|Failed)|ERROR :|failed:' "$out" ||
            grep -v '^[[:space:]]*$' "$out"; } | tail -n 1)"
        note="exit $rc: $(printf '%s' "$note" | cut -c1-160 | tr '\t|' '  ')"
    else
        status="ok"
    fi
    if [ "$status" = ok ] && [ "$check" = diff ]; then
        diffs="$(diff -rq "$src" "$dest" 2>&1 | wc -l || true)"
        [ "$diffs" = 0 ] || { status="wrong"; note="bucket differs from the source in $diffs paths"; }
    fi
    if [ "$status" = ok ] && [ -n "$expect" ] && [ "$written" != "$expect" ]; then
        note="server wrote $written objects, $expect expected"
    fi
    log "  $status, wall ${wall}s, user ${user}s, sys ${sys}s, rss ${rss} KiB, written $written${note:+; $note}"
    record "$case_id" "$tool" "$status" "$wall" "$user" "$sys" "$rss" "$written" "$note"
}

skip_row() { record "$1" "$2" "skipped" 0 0 0 0 0 "$3"; }

TOOLS=(s3ma)
for t in $ALL_PEERS; do
    in_list "$t" "$BENCH_TOOLS" && TOOLS+=("$t")
done

LOAD_BEFORE="$(uptime | sed 's/.*load average/load average/')"
log "load before the runs: $LOAD_BEFORE"
START_ALL="$EPOCHREALTIME"

# Small files: cases 1, 2, 3. Each tool works on its own copy of the tree,
# since case 3 changes it.
REWRITTEN=0
if in_list small "$BENCH_CASES"; then
    for tool in "${TOOLS[@]}"; do
        start_server "small-$tool"
        write_tool_configs
        make_bucket bench-small
        src="$T/tree-small-$tool"
        rm -rf "$src"
        cp -a "$SMALL_SRC" "$src"
        state="$T/state-small-$tool"
        measure 1 "$tool" "$src" bench-small "$state" "$BENCH_SMALL" diff
        measure 2 "$tool" "$src" bench-small "$state" 0 none
        # The server's clock and the tools' mtime comparisons have one-second
        # steps: make the rewrite clearly later than the upload.
        sleep 1.1
        REWRITTEN="$(rewrite_percent "$src")"
        measure 3 "$tool" "$src" bench-small "$state" "$REWRITTEN" diff
        stop_server
        rm -rf "$src"
    done
fi

# One big file: case 4.
if in_list big "$BENCH_CASES"; then
    for tool in "${TOOLS[@]}"; do
        start_server "big-$tool"
        write_tool_configs
        make_bucket bench-big
        measure 4 "$tool" "$BIG_SRC" bench-big "$T/state-big-$tool" 1 diff
        stop_server
    done
fi

# Many small files: case 5 (initial upload, then no-op).
if in_list huge "$BENCH_CASES"; then
    for tool in "${TOOLS[@]}"; do
        if [ "$tool" != s3ma ] && ! in_list "$tool" "$BENCH_PEERS_HUGE"; then
            skip_row 5a "$tool" "$BENCH_SKIP_REASON"
            skip_row 5b "$tool" "$BENCH_SKIP_REASON"
            continue
        fi
        start_server "huge-$tool"
        write_tool_configs
        make_bucket bench-huge
        state="$T/state-huge-$tool"
        measure 5a "$tool" "$HUGE_SRC" bench-huge "$state" "$BENCH_HUGE" diff
        measure 5b "$tool" "$HUGE_SRC" bench-huge "$state" 0 none
        stop_server
    done
fi

TOTAL_S="$(python3 -c "print('%.0f' % ($EPOCHREALTIME - $START_ALL))")"

# ---------------------------------------------------------------------------
# 6. Report
# ---------------------------------------------------------------------------

version_of() {
    case "$1" in
        s3ma) "$S3MA" --version ;;
        rclone | rclone32) rclone version | head -n 1 ;;
        aws | aws32) "$AWS" --version 2>&1 ;;
        s3cmd) s3cmd --version ;;
    esac
}

META="$T/meta.txt"
{
    echo "date=$(date -u '+%Y-%m-%d %H:%M UTC')"
    echo "nproc=$(nproc)"
    echo "cpu=$(grep -m1 '^model name' /proc/cpuinfo | sed 's/^[^:]*: *//')"
    echo "mem=$(awk '/^MemTotal/ {printf "%.0f GiB", $2 / 1048576}' /proc/meminfo)"
    echo "kernel=$(uname -sr)"
    echo "os=$(sed -n 's/^PRETTY_NAME="\{0,1\}\([^"]*\)"\{0,1\}$/\1/p' /etc/os-release)"
    echo "load=$LOAD_BEFORE"
    echo "load_after=$(uptime | sed 's/.*load average/load average/')"
    echo "commit=$S3MA_FROM"
    echo "server=$("$S3S_FS" --version), one process with an empty root per tool and data set, on 127.0.0.1"
    for t in s3ma rclone aws s3cmd; do
        in_list "$t" "${TOOLS[*]}" || in_list "${t}32" "${TOOLS[*]}" || continue
        echo "version_$t=$(version_of "$t" | head -n 1)"
    done
    echo "command=$BENCH_COMMAND"
    echo "total_s=$TOTAL_S"
    echo "small=$BENCH_SMALL"
    echo "small_kib=$SMALL_KIB"
    echo "rewritten=$REWRITTEN"
    echo "big_mib=$BENCH_BIG_MIB"
    echo "huge=$BENCH_HUGE"
    echo "huge_kib=$HUGE_KIB"
    echo "timeout=$BENCH_TIMEOUT"
} >"$META"
for t in "${TOOLS[@]}"; do printf '%s\t%s\n' "$t" "$(label "$t")"; done >"$T/labels.tsv"

write_report "$T" "$BENCH_OUT"

cat "$BENCH_OUT"
log "tables written to $BENCH_OUT (total ${TOTAL_S}s)"
