"""The load check of `microfer serve` (`microfer bench serve`), on 127.0.0.1 only.

The server runs as `microfer serve --port 0` in its own process, so its resident memory
(/proc/PID/status: VmRSS now, VmHWM the peak) is the page's alone and what it prints on
stderr can be searched for tracebacks. After one warm-up upload (models loaded: the
baseline), `rounds` bursts of `uploads` concurrent uploads of one clip each must all get
200; the resident memory after each burst is compared with the baseline. Then `stalled`
connections are opened (one sends half a request head and stops) and the page must still
answer. Every request has a time limit, and the whole check stops at `limit_s`.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable, Optional

UPLOADS = 20
STALLED = 50
ROUNDS = 3
LIMIT_S = 600.0
# memory counts as back at its baseline within this much (allocator pools, a warm cache)
RETURN_MB = 50.0


def bench_serve(
    model: Path,
    clip: Path,
    uploads: int = UPLOADS,
    stalled: int = STALLED,
    rounds: int = ROUNDS,
    limit_s: float = LIMIT_S,
    threads: Optional[int] = 1,
    echo: Optional[Callable[[str], None]] = None,
) -> dict:
    """Run the load check against a fresh `microfer serve` of bundle `model`; its figures."""
    say = echo or (lambda _: None)
    deadline = time.monotonic() + limit_s
    data = Path(clip).read_bytes()
    with tempfile.TemporaryFile() as err:
        cmd = [sys.executable, "-m", "microfer", "serve", "--model", str(model), "--port", "0"]
        if threads:
            cmd += ["--threads", str(threads)]
        server = subprocess.Popen(
            cmd,
            stdout=subprocess.PIPE,
            stderr=err,
            text=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        try:
            url = _wait_for_url(server, deadline)
            result = {"uploads": uploads, "stalled": stalled, "clip": Path(clip).name}
            result["rss_started_mb"] = _memory(server.pid)["VmRSS"]
            status, _ = _post(url, data, Path(clip).name, deadline)
            if status != 200:
                raise RuntimeError(f"the warm-up upload got {status}")
            time.sleep(1.0)  # as after a burst: the handler has finished
            result["rss_baseline_mb"] = _memory(server.pid)["VmRSS"]
            result["bursts"] = []
            for r in range(rounds):
                say(
                    f"burst {r + 1}/{rounds}: {uploads} concurrent uploads of {Path(clip).name} ..."
                )
                result["bursts"].append(
                    _burst(server.pid, url, data, Path(clip).name, uploads, deadline)
                )
            result["rss_peak_mb"] = _memory(server.pid)["VmHWM"]
            say(f"{stalled} stalled connections, then a request ...")
            result["stalled_check"] = _stalled(url, stalled, deadline)
        finally:
            server.send_signal(signal.SIGINT)
            try:
                server.wait(timeout=30)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait()
            err.seek(0)
            stderr = err.read().decode("utf-8", "replace")
    result["tracebacks"] = stderr.count("Traceback")
    base = result["rss_baseline_mb"]
    result["rss_after_mb"] = result["bursts"][-1]["rss_after_mb"]
    result["goals"] = {
        "all_answered_200": all(b["statuses"] == {"200": uploads} for b in result["bursts"]),
        "no_tracebacks": result["tracebacks"] == 0,
        "memory_back_to_baseline": result["rss_after_mb"] - base <= RETURN_MB,
        "answers_while_stalled": result["stalled_check"]["status"] == 200,
    }
    return result


def format_serve(r: dict) -> str:
    lines = [
        f"serve under load (127.0.0.1, {r['clip']}): resident memory {r['rss_started_mb']:.0f} MB "
        f"at start, {r['rss_baseline_mb']:.0f} MB after one upload (the baseline)"
    ]
    for i, b in enumerate(r["bursts"], 1):
        lines.append(
            f"  burst {i}: {r['uploads']} concurrent uploads -> {_statuses(b['statuses'])} in "
            f"{b['wall_s']:.1f} s; labels {', '.join(b['labels'])}; resident "
            f"{b['rss_during_max_mb']:.0f} MB at most while it ran, {b['rss_after_mb']:.0f} MB after"
        )
    s = r["stalled_check"]
    lines += [
        f"  peak resident memory (VmHWM) {r['rss_peak_mb']:.0f} MB; after the bursts "
        f"{r['rss_after_mb']:.0f} MB ({r['rss_after_mb'] - r['rss_baseline_mb']:+.0f} MB on the "
        f"baseline; back within {RETURN_MB:.0f} MB: {_yes(r['goals']['memory_back_to_baseline'])})",
        f"  {r['stalled']} stalled connections: the page answered {s['status']} in "
        f"{s['seconds']:.2f} s",
        f"  tracebacks on the server's stderr: {r['tracebacks']}",
    ]
    return "\n".join(lines)


def _yes(ok: bool) -> str:
    return "yes" if ok else "NO"


def _statuses(counts: dict) -> str:
    return ", ".join(f"{n} x {code}" for code, n in sorted(counts.items()))


def _wait_for_url(server: subprocess.Popen, deadline: float) -> str:
    import selectors

    with selectors.DefaultSelector() as sel:
        sel.register(server.stdout, selectors.EVENT_READ)
        while time.monotonic() < deadline:
            if not sel.select(timeout=min(5.0, max(0.1, deadline - time.monotonic()))):
                continue
            line = server.stdout.readline()
            if not line:
                raise RuntimeError(f"`microfer serve` ended (exit {server.wait()}) before serving")
            m = re.search(r" at (http://\S+/)", line)
            if m:
                return m.group(1)
    raise RuntimeError("`microfer serve` did not start within the time limit")


def _memory(pid: int) -> dict[str, float]:
    """VmRSS and VmHWM of process `pid` in MB (Linux /proc)."""
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            out[key] = int(value.split()[0]) / 1024
    return out


def _post(url: str, data: bytes, name: str, deadline: float) -> tuple[int, dict]:
    request = urllib.request.Request(
        url + "api/predict",
        data=data,
        method="POST",
        headers={"X-Filename": name, "Content-Type": "application/octet-stream"},
    )
    timeout = max(1.0, deadline - time.monotonic())
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}")
    except OSError as exc:  # reset, refused, timed out: counted, not raised
        return 0, {"error": f"{type(exc).__name__}: {exc}"}


def _burst(pid: int, url: str, data: bytes, name: str, n: int, deadline: float) -> dict:
    samples = []
    t0 = time.perf_counter()
    with ThreadPoolExecutor(n) as pool:
        futures = [pool.submit(_post, url, data, name, deadline) for _ in range(n)]
        while not all(f.done() for f in futures):
            samples.append(_memory(pid)["VmRSS"])
            time.sleep(0.2)
        answers = [f.result() for f in futures]
    wall = time.perf_counter() - t0
    time.sleep(1.0)  # let the handler threads finish and free what they held
    counts: dict[str, int] = {}
    for status, _ in answers:
        counts[str(status)] = counts.get(str(status), 0) + 1
    return {
        "statuses": counts,
        "labels": sorted({d.get("label", "-") for s, d in answers if s == 200}),
        "errors": sorted({d.get("error", "") for s, d in answers if s != 200})[:5],
        "wall_s": wall,
        "rss_during_max_mb": max(samples, default=0.0),
        "rss_after_mb": _memory(pid)["VmRSS"],
    }


def _stalled(url: str, n: int, deadline: float) -> dict:
    host, port = re.match(r"http://([^:/]+):(\d+)/", url).groups()
    socks = [socket.create_connection((host, int(port)), timeout=10) for _ in range(n)]
    try:
        socks[0].sendall(f"POST /api/predict HTTP/1.1\r\nHost: {host}\r\n".encode())  # no more
        t0 = time.perf_counter()
        try:
            timeout = max(1.0, min(30.0, deadline - time.monotonic()))
            with urllib.request.urlopen(url + "api/info", timeout=timeout) as info:
                status = info.status
        except OSError:
            status = 0
        return {"status": status, "seconds": time.perf_counter() - t0}
    finally:
        for s in socks:
            s.close()
