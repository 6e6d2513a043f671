#!/usr/bin/env python3
"""A TCP proxy that adds a round trip: every chunk is handed on half the
delay after it arrived, each direction keeping its order (no bandwidth
limit). For benchmarks where netem is not available.

    bench/latency-proxy.py LISTEN_PORT UPSTREAM_HOST:PORT RTT_MS
"""
import asyncio
import sys


async def pipe(reader, writer, half):
    loop = asyncio.get_running_loop()
    queue = asyncio.Queue()

    async def send():
        while True:
            due, data = await queue.get()
            wait = due - loop.time()
            if wait > 0:
                await asyncio.sleep(wait)
            if data is None:
                break
            writer.write(data)
            await writer.drain()
        try:
            writer.write_eof()
        except OSError:
            pass

    sender = asyncio.create_task(send())
    try:
        while True:
            data = await reader.read(65536)
            await queue.put((loop.time() + half, data or None))
            if not data:
                break
    except OSError:
        await queue.put((loop.time(), None))
    try:
        await sender
    except OSError:
        pass


async def main():
    port, upstream, rtt_ms = int(sys.argv[1]), sys.argv[2], float(sys.argv[3])
    host, uport = upstream.rsplit(":", 1)
    half = rtt_ms / 2000.0

    async def handle(creader, cwriter):
        await asyncio.sleep(half * 2)  # the TCP handshake's round trip
        try:
            ureader, uwriter = await asyncio.open_connection(host, int(uport))
        except OSError:
            cwriter.close()
            return
        await asyncio.gather(pipe(creader, uwriter, half), pipe(ureader, cwriter, half))
        cwriter.close()
        uwriter.close()

    server = await asyncio.start_server(handle, "127.0.0.1", port)
    async with server:
        await server.serve_forever()


asyncio.run(main())
