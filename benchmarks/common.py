"""Small helpers shared by the benchmarks: timing, reporting, a server in a child process."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

RESULTS: list[dict[str, Any]] = []


@dataclass
class Result:
    name: str
    figure: float
    unit: str
    floor: float | None = None
    target: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def ratio(self) -> float | None:
        if self.floor in (None, 0):
            return None
        return self.figure / self.floor  # type: ignore[operator]

    def report(self) -> None:
        ratio = f"  ratio {self.ratio:.2f}x floor ({self.floor:.4g} {self.unit})" if self.ratio is not None else ""
        target = f"  [target: {self.target}]" if self.target else ""
        extra = "".join(f"  {k}={v}" for k, v in self.extra.items())
        print(f"{self.name}: {self.figure:.4g} {self.unit}{ratio}{target}{extra}", flush=True)
        RESULTS.append({"name": self.name, "figure": self.figure, "unit": self.unit, "floor": self.floor,
                        "ratio": self.ratio, "target": self.target, **self.extra})


async def best_of(runs: int, measure: Callable[[], Awaitable[float]]) -> float:
    """The best of a few runs: the machine is shared, the minimum is the least disturbed figure."""
    return min([await measure() for _ in range(runs)])


def start_child(module: str, *args: str) -> tuple[subprocess.Popen[str], dict[str, Any]]:
    """Start ``python -m module args`` and wait for the JSON line it prints when ready."""
    proc = subprocess.Popen([sys.executable, "-m", module, *args], stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "DAPI_LOG_LEVEL": "WARNING"})
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line:
        raise RuntimeError(f"{module} exited before it was ready")
    return proc, json.loads(line)


def stop_child(proc: subprocess.Popen[str]) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()


def rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def now() -> float:
    return time.perf_counter()


def run(coro: Awaitable[Any]) -> Any:
    return asyncio.run(coro)  # type: ignore[arg-type]


async def raw_request(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, method: str, path: str,
                      body: bytes = b"") -> tuple[int, bytes]:
    """One keep-alive HTTP/1.1 exchange with a minimal client, so that the server, not the client, is measured."""
    head = f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
    if body:
        head += f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
    writer.write(head.encode() + b"\r\n" + body)
    response_head = await reader.readuntil(b"\r\n\r\n")
    status = int(response_head[9:12])
    length = 0
    for line in response_head.split(b"\r\n"):
        if line[:15].lower() == b"content-length:":
            length = int(line[15:])
    return status, await reader.readexactly(length)
