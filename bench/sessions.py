#!/usr/bin/env python3
"""Many simultaneous interactive exec sessions through hatch's API server.

Opens N WebSocket `v5.channel.k8s.io` exec sessions (`cat` on a terminal) to one pod, then every
second each session types a line and waits for its echo; reports echo latency percentiles,
errors, and the hatch process's memory per session. Used by bench/run (case `sessions`).

Usage: sessions.py --kubeconfig FILE --pod NAME [--sessions 1000] [--seconds 60] [--pid PID]
"""

import argparse
import asyncio
import base64
import json
import os
import ssl
import statistics
import sys
import time
import urllib.parse

import websockets
import yaml


def load_kubeconfig(path):
    config = yaml.safe_load(open(path))
    ctx = next(c["context"] for c in config["contexts"] if c["name"] == config["current-context"])
    cluster = next(c["cluster"] for c in config["clusters"] if c["name"] == ctx["cluster"])
    user = next(u["user"] for u in config["users"] if u["name"] == ctx["user"])
    tls = ssl.create_default_context(cadata=base64.b64decode(cluster["certificate-authority-data"]).decode())
    return cluster["server"].replace("https://", "wss://"), user["token"], tls


def rss_kib(pid):
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


class Session:
    def __init__(self, index):
        self.index = index
        self.latencies = []
        self.errors = 0
        self.ws = None


async def open_session(s, url, token, tls):
    s.ws = await websockets.connect(
        url,
        ssl=tls,
        subprotocols=["v5.channel.k8s.io"],
        additional_headers={"Authorization": f"Bearer {token}"},
        max_size=None,
        open_timeout=60,
        ping_interval=None,
    )
    # The terminal size first, as a real client sends it.
    await s.ws.send(bytes([4]) + json.dumps({"Width": 80, "Height": 24}).encode())


async def echo_loop(s, seconds, start_at):
    await asyncio.sleep(max(0.0, start_at - time.monotonic()) + (s.index % 100) / 100)
    end = time.monotonic() + seconds
    n = 0
    while time.monotonic() < end:
        marker = f"s{s.index}-{n}"
        n += 1
        sent = time.perf_counter()
        try:
            await s.ws.send(bytes([0]) + f"{marker}\r".encode())
            seen = b""
            while marker.encode() not in seen:
                msg = await asyncio.wait_for(s.ws.recv(), timeout=10)
                if isinstance(msg, bytes) and msg[:1] == b"\x01":
                    seen += msg[1:]
            s.latencies.append((time.perf_counter() - sent) * 1000)
        except Exception:
            s.errors += 1
        await asyncio.sleep(max(0.0, 1.0 - (time.perf_counter() - sent)))


async def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--kubeconfig", required=True)
    parser.add_argument("--pod", required=True)
    parser.add_argument("--namespace", default="default")
    parser.add_argument("--sessions", type=int, default=1000)
    parser.add_argument("--seconds", type=int, default=60)
    parser.add_argument("--pid", type=int, help="the hatch process, for memory per session")
    args = parser.parse_args()
    server, token, tls = load_kubeconfig(args.kubeconfig)
    query = urllib.parse.urlencode([("command", "cat"), ("stdin", "true"), ("stdout", "true"), ("tty", "true")])
    url = f"{server}/api/v1/namespaces/{args.namespace}/pods/{args.pod}/exec?{query}"

    before = rss_kib(args.pid) if args.pid else 0
    sessions = [Session(i) for i in range(args.sessions)]
    open_errors = 0
    opened = time.monotonic()
    # Open in waves so the TLS handshakes do not all land at once.
    for wave in range(0, len(sessions), 50):
        results = await asyncio.gather(*(open_session(s, url, token, tls) for s in sessions[wave : wave + 50]), return_exceptions=True)
        for s, r in zip(sessions[wave : wave + 50], results):
            if isinstance(r, Exception):
                open_errors += 1
                s.errors += 1
                print(f"session {s.index}: {r}", file=sys.stderr)
    open_seconds = time.monotonic() - opened
    live = [s for s in sessions if s.ws is not None]
    during = rss_kib(args.pid) if args.pid else 0
    start_at = time.monotonic() + 1
    await asyncio.gather(*(echo_loop(s, args.seconds, start_at) for s in live))
    for s in live:
        try:
            await s.ws.close()
        except Exception:
            pass
    latencies = sorted(l for s in sessions for l in s.latencies)
    pct = lambda p: latencies[min(len(latencies) - 1, int(len(latencies) * p / 100))] if latencies else None  # noqa: E731
    print(
        json.dumps(
            {
                "sessions": args.sessions,
                "opened": len(live),
                "open_seconds": round(open_seconds, 2),
                "echoes": len(latencies),
                "errors": sum(s.errors for s in sessions),
                "p50_ms": pct(50),
                "p99_ms": pct(99),
                "max_ms": latencies[-1] if latencies else None,
                "mean_ms": statistics.mean(latencies) if latencies else None,
                "rss_before_kib": before,
                "rss_during_kib": during,
                "kib_per_session": (during - before) / max(1, len(live)) if args.pid else None,
                "latencies": latencies,
            }
        )
    )


if __name__ == "__main__":
    asyncio.run(main())
