"""Concurrent streaming clients against a server: aggregate generated tokens/s and time to first
token (p50, p95) at each client count, for `phi2cpu serve --parallel N` and, when a binary is
given, llama.cpp's `llama-server --parallel N` on the same GGUF file.

    python benchmarks/serve_concurrency.py MODEL.gguf [--threads 2] [--parallel 1 8]
        [--clients 1 2 4 8] [--requests 2] [--max-tokens 128] [--ctx 512]
        [--llama-server PATH (default: $LLAMA_SERVER)] [--stall 400 [--stall-only]] [--json OUT.json]

Each client sends --requests streaming completions one after another (greedy, end-of-text
ignored, so every request generates --max-tokens tokens), prompts of 24 to 82 tokens that differ
from client to client (decode dominates, as in a chat). Aggregate tokens/s is all generated tokens over the wall time from the
first request to the last token. A server is started per (peer, --parallel) on a free loopback
port and warmed with one request. `--stall P` also measures, for phi2cpu at --parallel 2, the
longest gap between two tokens of a decoding stream while a P-token prompt arrives, with the
default --batch-chunk and with chunking off (a chunk of the whole context). Prints the load
average at the start and the end; timings on a loaded machine compare only within one run."""
from __future__ import annotations

import argparse
import http.client
import json
import os
import socket
import statistics
import subprocess
import sys
import threading
import time
from typing import List, Optional

FILLER = ("    value = compute(item, scale=2.5)\n    if value > limit:\n        results.append(value)\n")


def prompt(client: int, request: int) -> str:
    lines = (client + 2 * request) % 3  # ~29 tokens a FILLER after a ~24-token head: 24..82 tokens
    return f"def process_{client}_{request}(items, limit):\n    results = []\n    for item in items:\n" + FILLER * lines


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(self, cmd: List[str], port: int, name: str):
        self.name, self.port = name, port
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise SystemExit(f"{name} exited with {self.proc.returncode}: {' '.join(cmd)}")
            try:
                c = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
                c.request("GET", "/health")
                if c.getresponse().status == 200:
                    return
            except OSError:
                pass
            time.sleep(0.25)
        self.stop()
        raise SystemExit(f"{name} did not become healthy: {' '.join(cmd)}")

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def stream(port: int, text: str, max_tokens: int, on_token=None) -> dict:
    """One streaming completion: seconds to the first token, token count, end time."""
    body = json.dumps({"prompt": text, "max_tokens": max_tokens, "temperature": 0, "ignore_eos": True,
                       "stream": True, "stream_options": {"include_usage": True}})
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
    t0 = time.perf_counter()
    c.request("POST", "/v1/completions", body, {"Content-Type": "application/json"})
    r = c.getresponse()
    if r.status != 200:
        raise SystemExit(f"HTTP {r.status}: {r.read()[:300]!r}")
    first, pieces, usage = None, 0, None
    for line in r:
        if not line.startswith(b"data: {"):
            continue
        ev = json.loads(line[6:])
        if ev.get("usage"):
            usage = ev["usage"].get("completion_tokens")
        for ch in ev.get("choices") or []:
            if ch.get("text"):
                now = time.perf_counter()
                first = first or now
                pieces += 1
                if on_token:
                    on_token(now)
    c.close()
    return {"ttft": (first or time.perf_counter()) - t0, "tokens": usage if usage else pieces,
            "end": time.perf_counter()}


def pct(xs: List[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, max(0, round(q * (len(xs) - 1))))]


def run_clients(port: int, clients: int, requests: int, max_tokens: int) -> dict:
    results: List[dict] = []
    lock = threading.Lock()

    def client(i: int) -> None:
        for r in range(requests):
            out = stream(port, prompt(i, r), max_tokens)
            with lock:
                results.append(out)

    t0 = time.perf_counter()
    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = max(r["end"] for r in results) - t0
    ttfts = [r["ttft"] for r in results]
    return {"clients": clients, "tok_s": sum(r["tokens"] for r in results) / wall,
            "ttft_p50": pct(ttfts, 0.5), "ttft_p95": pct(ttfts, 0.95), "wall_s": wall}


def phi2cpu_cmd(args, parallel: int, port: int, chunk: Optional[int] = None) -> List[str]:
    cmd = [sys.executable, "-m", "phi2cpu", "serve", args.model, "--port", str(port), "--threads",
           str(args.threads), "--parallel", str(parallel), "--ctx-size", str(args.ctx), "--log-level", "warning"]
    return cmd + (["--batch-chunk", str(chunk)] if chunk else [])


def llama_cmd(args, parallel: int, port: int) -> List[str]:
    # llama-server's --ctx-size is shared by its slots: each slot gets ctx / parallel
    return [args.llama_server, "-m", args.model, "--host", "127.0.0.1", "--port", str(port), "-t", str(args.threads),
            "--parallel", str(parallel), "--ctx-size", str(args.ctx * parallel), "--log-disable"]


def stall(args) -> List[dict]:
    """The longest gap between tokens of a decoding stream while a long prompt is prefilled."""
    out = []
    for chunk in (None, args.ctx):
        port = free_port()
        srv = Server(phi2cpu_cmd(args, 2, port, chunk), port, "phi2cpu")
        try:
            stream(port, "warm up", 4)
            times: List[float] = []
            long_prompt = "x" + " y" * (args.stall - 1)  # one token a word
            t = threading.Thread(target=stream, args=(port, "def f(x):", 4 * args.max_tokens, times.append))
            t.start()
            while len(times) < 8:
                time.sleep(0.01)
            stream(port, long_prompt, 1)
            t.join()
            gaps = [b - a for a, b in zip(times, times[1:])]
            out.append({"batch_chunk": chunk or "default", "max_gap_s": max(gaps),
                        "median_gap_s": statistics.median(gaps)})
        finally:
            srv.stop()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("model")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--parallel", type=int, nargs="+", default=[1, 8])
    ap.add_argument("--clients", type=int, nargs="+", default=[1, 2, 4, 8])
    ap.add_argument("--requests", type=int, default=2, help="requests per client")
    ap.add_argument("--max-tokens", type=int, default=128)
    ap.add_argument("--ctx", type=int, default=512, help="context positions per slot")
    ap.add_argument("--llama-server", default=os.environ.get("LLAMA_SERVER"))
    ap.add_argument("--stall", type=int, default=0, metavar="P", help="also measure the stall of a P-token prompt")
    ap.add_argument("--stall-only", action="store_true", help="with --stall: skip the client-count table")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    print(f"load average at start: {os.getloadavg()}")
    peers = [("phi2cpu", phi2cpu_cmd)]
    if args.llama_server and os.access(args.llama_server, os.X_OK):
        peers.append(("llama-server", llama_cmd))
    else:
        print(f"llama-server: skipped ({'not executable: ' + args.llama_server if args.llama_server else 'no binary: set LLAMA_SERVER or --llama-server'})")
    rows = []
    for name, make in [] if args.stall_only else peers:
        for parallel in args.parallel:
            port = free_port()
            srv = Server(make(args, parallel, port), port, name)
            try:
                stream(port, "warm up", 4)
                for k in args.clients:
                    row = {"server": name, "parallel": parallel, **run_clients(port, k, args.requests, args.max_tokens)}
                    rows.append(row)
                    print(f"{name:13s} --parallel {parallel}  {k} clients  {row['tok_s']:7.1f} tok/s  "
                          f"TTFT p50 {row['ttft_p50'] * 1000:7.0f} ms  p95 {row['ttft_p95'] * 1000:7.0f} ms", flush=True)
            finally:
                srv.stop()
    if rows:
        print("\n| server | --parallel | clients | tok/s | TTFT p50 ms | TTFT p95 ms |\n|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['server']} | {r['parallel']} | {r['clients']} | {r['tok_s']:.1f} | {r['ttft_p50'] * 1000:.0f} "
              f"| {r['ttft_p95'] * 1000:.0f} |")
    stalls = stall(args) if args.stall else []
    for s in stalls:
        print(f"stall, {args.stall}-token prompt, --parallel 2, --batch-chunk {s['batch_chunk']}: longest gap "
              f"{s['max_gap_s'] * 1000:.0f} ms (median gap {s['median_gap_s'] * 1000:.0f} ms)")
    print(f"load average at end: {os.getloadavg()}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"rows": rows, "stall": stalls, "args": vars(args)}, f, indent=1)


if __name__ == "__main__":
    main()
