#!/usr/bin/env python3
"""Measures `s3ma watch` latency against a local s3s-fs server.

Usage: python3 bench/watch-latency.py [--changes N] [--burst N] [--debounce MS]
       [--output docs/benchmarks-watch.md]

It builds s3ma in release mode, starts s3s-fs (installed by
scripts/setup-test-env.sh) on a free port, starts `s3ma watch` on an empty
directory and then:

1. latency: N changes one after the other (new files, then edits that change
   the size), each timed from the moment the writer closed the file to the
   moment the object exists on the server with its full size. s3s-fs keeps
   each object as a file under its data directory, so "exists on the server"
   is read from there, without a client in the loop;
2. burst: N files of 4 KiB written as fast as possible in 50 directories,
   timed from the last close until every object is on the server.

It prints p50/p90/p99/max and writes a markdown section to --output.
"""

import argparse
import json
import os
import platform
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port, deadline=60):
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    sys.exit(f"s3s-fs did not start on port {port}")


def percentile(values, p):
    ordered = sorted(values)
    k = max(0, min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1))))
    return ordered[k]


def wait_object(path, size, deadline=30.0):
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        try:
            if os.stat(path).st_size == size:
                return time.monotonic()
        except FileNotFoundError:
            pass
        time.sleep(0.001)
    sys.exit(f"{path} did not appear with {size} bytes within {deadline} s")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--changes", type=int, default=300)
    ap.add_argument("--burst", type=int, default=5000)
    ap.add_argument("--debounce", type=int, default=200)
    ap.add_argument("--output", default=os.path.join(ROOT, "docs/benchmarks-watch.md"))
    args = ap.parse_args()

    subprocess.run(["cargo", "build", "--release", "--locked", "--quiet"], cwd=ROOT, check=True)
    s3ma = os.path.join(ROOT, "target/release/s3ma")
    s3s = shutil.which("s3s-fs") or os.path.expanduser("~/.cargo/bin/s3s-fs")
    if not os.path.exists(s3s):
        sys.exit("s3s-fs not found: run ./scripts/setup-test-env.sh first")

    work = tempfile.mkdtemp(prefix="s3ma-watch-bench-")
    data, tree, state = (os.path.join(work, d) for d in ("data", "tree", "state"))
    for d in (data, tree, state):
        os.makedirs(d)
    os.makedirs(os.path.join(data, "bench"))
    port = free_port()
    server = subprocess.Popen(
        [s3s, "--host", "127.0.0.1", "--port", str(port), "--access-key", "bench",
         "--secret-key", "bench-secret", data],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    watch = None
    try:
        wait_port(port)
        env = dict(os.environ, AWS_ACCESS_KEY_ID="bench", AWS_SECRET_ACCESS_KEY="bench-secret")
        cmd = [s3ma, "watch", tree, "s3://bench/w", "--endpoint", f"http://127.0.0.1:{port}",
               "--region", "us-east-1", "--state-dir", state, "--json",
               "--debounce", str(args.debounce)]
        log = open(os.path.join(work, "watch.log"), "w+")
        watch = subprocess.Popen(cmd, cwd=work, env=env, stdout=log, stderr=subprocess.STDOUT)
        end = time.monotonic() + 60
        while '"action":"ready"' not in open(log.name).read():
            if time.monotonic() > end or watch.poll() is not None:
                sys.exit("s3ma watch did not get ready:\n" + open(log.name).read())
            time.sleep(0.05)
        objects = os.path.join(data, "bench", "w")

        # 1. One change at a time.
        latencies = []
        half = args.changes // 2
        os.makedirs(os.path.join(tree, "lat"))
        for i in range(args.changes):
            name = f"lat/f{i % max(half, 1)}.txt"
            size = 1024 if i < half else 2048 + i
            path = os.path.join(tree, name)
            with open(path, "wb") as f:
                f.write(os.urandom(size))
            closed = time.monotonic()
            seen = wait_object(os.path.join(objects, name), size)
            latencies.append((seen - closed) * 1000)
            time.sleep(0.02)

        # 2. A burst.
        for d in range(50):
            os.makedirs(os.path.join(tree, "burst", f"d{d:02}"))
        first = time.monotonic()
        for i in range(args.burst):
            with open(os.path.join(tree, "burst", f"d{i % 50:02}", f"f{i}.bin"), "wb") as f:
                f.write(os.urandom(4096))
        last_close = time.monotonic()
        deadline = last_close + 300
        while True:
            count = 0
            for _, _, files in os.walk(os.path.join(objects, "burst")):
                count += len(files)
            if count >= args.burst:
                break
            if time.monotonic() > deadline:
                sys.exit(f"burst: only {count} of {args.burst} objects after 300 s")
            time.sleep(0.02)
        done = time.monotonic()
        uploads = sum(1 for line in open(log.name)
                      if '"action":"upload"' in line and '"key":"w/burst/' in line)
    finally:
        if watch:
            watch.terminate()
            watch.wait()
        server.terminate()
        server.wait()

    p50, p90, p99 = (percentile(latencies, p) for p in (50, 90, 99))
    cpu = "unknown"
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    command = "python3 bench/watch-latency.py" + (
        f" --changes {args.changes} --burst {args.burst} --debounce {args.debounce}")
    text = f"""## `s3ma watch`: latency and burst convergence

Measured {time.strftime('%Y-%m-%d')} with `{command}` on {os.cpu_count()} cores
({cpu}), Linux {platform.release()}, against s3s-fs on the same machine,
release build, debounce {args.debounce} ms.

Latency is timed from the writer closing the file to the object existing on
the server with its full size (read from s3s-fs's data directory, no client
in the loop). {args.changes} changes, one after the other: {half} new 1 KiB
files, then {args.changes - half} edits that change their size.

| changes | p50 | p90 | p99 | max | target (p99) |
|---:|---:|---:|---:|---:|---:|
| {args.changes} | {p50:.0f} ms | {p90:.0f} ms | {p99:.0f} ms | {max(latencies):.0f} ms | below {args.debounce + 300} ms (debounce + 300 ms) |

Burst: {args.burst} files of 4 KiB written as fast as possible into 50 new
directories (the writer took {(last_close - first):.2f} s); every object was on
the server {(done - last_close):.2f} s after the last file was closed
({(done - first):.2f} s after the first), with {uploads} uploads for
{args.burst} files.
"""
    print(text)
    worst = max(range(len(latencies)), key=lambda i: latencies[i])
    print(json.dumps({"p50": p50, "p90": p90, "p99": p99, "max": max(latencies), "worst_change": worst,
                      "burst_after_last_close_s": done - last_close}))
    with open(args.output, "w") as f:
        f.write(text)
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
