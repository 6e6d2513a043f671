#!/usr/bin/env python3
"""Measures `s3ma watch` latency against a local s3s-fs server.

Usage: python3 bench/watch-latency.py [--changes N] [--burst N] [--debounce MS]
       [--read-seconds S] [--output docs/benchmarks-watch.md]

It builds s3ma in release mode, starts s3s-fs (installed by
scripts/setup-test-env.sh) on a free port, starts `s3ma watch` on an empty
directory and then:

1. latency: N changes one after the other (new files, then edits that change
   the size), each timed from the moment the writer closed the file to the
   moment the object exists on the server with its full size. s3s-fs keeps
   each object as a file under its data directory, so "exists on the server"
   is read from there, without a client in the loop;
2. burst: N files of 4 KiB written as fast as possible in 50 directories:
   each file's latency (its close to the daemon's line saying its upload
   is done, read as it is printed), and the time from the last close until
   every object is on the server;
3. read load: 50 files read in a loop for S seconds, with the daemon's CPU
   time (user + system, from /proc) over that time.

It prints the figures and writes a markdown section to --output.
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
import threading
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
    ap.add_argument("--read-seconds", type=float, default=10.0)
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
        watch = subprocess.Popen(cmd, cwd=work, env=env, stdout=subprocess.PIPE,
                                 stderr=log, text=True, bufsize=1)
        # Each line as it is printed, with when it arrived.
        done_at = {}
        ready = threading.Event()

        def read_lines():
            for line in watch.stdout:
                now = time.monotonic()
                log.write(line)
                try:
                    v = json.loads(line)
                except ValueError:
                    continue
                if v.get("action") == "ready":
                    ready.set()
                if v.get("action") == "upload":
                    done_at.setdefault(v["key"], now)

        reader = threading.Thread(target=read_lines, daemon=True)
        reader.start()
        if not ready.wait(60):
            sys.exit("s3ma watch did not get ready")
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
        closed_at = {}
        for i in range(args.burst):
            rel = f"burst/d{i % 50:02}/f{i}.bin"
            with open(os.path.join(tree, rel), "wb") as f:
                f.write(os.urandom(4096))
            closed_at["w/" + rel] = time.monotonic()
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
        end = done + 30
        while len([k for k in closed_at if k in done_at]) < args.burst and time.monotonic() < end:
            time.sleep(0.05)
        burst_lat = [(done_at[k] - t) * 1000 for k, t in closed_at.items() if k in done_at]
        uploads = len([k for k in done_at if k.startswith("w/burst/")])

        # 3. Reads only.
        os.makedirs(os.path.join(tree, "read"))
        for i in range(50):
            with open(os.path.join(tree, "read", f"r{i}.html"), "wb") as f:
                f.write(os.urandom(8192))
        wait_object(os.path.join(objects, "read", "r49.html"), 8192)
        time.sleep(1)

        def cpu_seconds():
            fields = open(f"/proc/{watch.pid}/stat").read().rsplit(")", 1)[1].split()
            return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

        reads = 0
        cpu0, t0 = cpu_seconds(), time.monotonic()
        while time.monotonic() - t0 < args.read_seconds:
            for i in range(50):
                with open(os.path.join(tree, "read", f"r{i}.html"), "rb") as f:
                    f.read()
                reads += 1
        read_cpu = (cpu_seconds() - cpu0) / (time.monotonic() - t0) * 100
    finally:
        if watch:
            watch.terminate()
            watch.wait()
            log.close()
        server.terminate()
        server.wait()

    p50, p90, p99 = (percentile(latencies, p) for p in (50, 90, 99))
    b50, b90, b99 = (percentile(burst_lat, p) for p in (50, 90, 99))
    cpu = "unknown"
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    command = "python3 bench/watch-latency.py" + (
        f" --changes {args.changes} --burst {args.burst} --debounce {args.debounce}"
        f" --read-seconds {args.read_seconds:g}")
    text = f"""## `s3ma watch`: latency and burst convergence

Measured {time.strftime('%Y-%m-%d')} with `{command}` on {os.cpu_count()} cores
({cpu}), Linux {platform.release()}, against s3s-fs on the same machine,
release build, debounce {args.debounce} ms.

Latency is timed from the writer closing the file to the object existing on
the server with its full size (read from s3s-fs's data directory, no client
in the loop). {args.changes} changes, one after the other: {half} new 1 KiB
files, then {args.changes - half} edits that change their size.

A file closed after writing is complete, so it goes at once; the quiet
window of {args.debounce} ms is for files written without a close (memory
maps, a log held open).

| changes | p50 | p90 | p99 | max | target |
|---:|---:|---:|---:|---:|---:|
| {args.changes} one at a time | {p50:.1f} ms | {p90:.1f} ms | {p99:.1f} ms | {max(latencies):.1f} ms | p50 below 50 ms |
| {args.burst} in a burst | {b50:.0f} ms | {b90:.0f} ms | {b99:.0f} ms | {max(burst_lat):.0f} ms | (each file from its close to its upload's line) |

Burst: {args.burst} files of 4 KiB written as fast as possible into 50 new
directories (the writer took {(last_close - first):.2f} s); every object was on
the server {(done - last_close):.2f} s after the last file was closed
({(done - first):.2f} s after the first), with {uploads} uploads for
{args.burst} files.

Read load: 50 files of 8 KiB read in a loop for {args.read_seconds:g} s
({reads} reads, {reads / args.read_seconds:.0f} a second): the daemon used
{read_cpu:.2f} % of a core (its user + system time from /proc over that
time). Reads never reach it: the watches ask the kernel for changes only.
"""
    print(text)
    worst = max(range(len(latencies)), key=lambda i: latencies[i])
    print(json.dumps({"p50": p50, "p90": p90, "p99": p99, "max": max(latencies), "worst_change": worst,
                      "burst_p50": b50, "burst_p99": b99,
                      "burst_after_last_close_s": done - last_close,
                      "read_cpu_percent": read_cpu, "reads": reads}))
    with open(args.output, "w") as f:
        f.write(text)
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
