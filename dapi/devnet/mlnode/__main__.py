"""`python -m dapi.devnet.mlnode`: serve simulated ML nodes on one port until SIGINT/SIGTERM.

Prints one JSON ready line (`{"event": "ready", "url": ..., "nodes": {name: url}}`) on stdout; more
nodes can be added, inspected and given faults through `/sim/...` (see `dapi.devnet.mlnode.app`).
"""

from __future__ import annotations

import argparse
import asyncio
import json

from dapi.devnet.mlnode.capacity import DEFAULT_MAX_CONCURRENT, DEFAULT_QUEUE_TIMEOUT, DEFAULT_TOKENS_PER_SECOND
from dapi.devnet.mlnode.node import DEFAULT_BATCH_INTERVAL
from dapi.devnet.mlnode.server import start_sim_mlnodes
from dapi.logs import configure_logging
from dapi.runtime.signals import install_stop_signals


async def _run_standalone(args: argparse.Namespace) -> None:
    server = await start_sim_mlnodes(
        args.node,
        host=args.host,
        port=args.port,
        batch_interval=args.batch_interval,
        load_delay=args.load_delay,
        max_concurrent=args.max_concurrent,
        tokens_per_second=args.tokens_per_second,
        queue_timeout=args.queue_timeout,
    )
    stop = asyncio.Event()
    remove_signals = install_stop_signals(stop)
    try:
        print(
            json.dumps(
                {"event": "ready", "url": server.url, "nodes": {n.name: server.node_url(n.name) for n in server.nodes}}
            ),
            flush=True,
        )
        await stop.wait()
    finally:
        remove_signals()
        await server.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m dapi.devnet.mlnode", description="Serve simulated ML nodes on one port."
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8080)
    parser.add_argument("--node", action="append", default=[], help="node name (repeatable); more via POST /sim/nodes")
    parser.add_argument("--batch-interval", type=float, default=DEFAULT_BATCH_INTERVAL)
    parser.add_argument("--load-delay", type=float, default=0.0, help="seconds inference/up takes")
    parser.add_argument("--max-concurrent", type=int, default=DEFAULT_MAX_CONCURRENT, help="requests served at once")
    parser.add_argument(
        "--tokens-per-second", type=float, default=DEFAULT_TOKENS_PER_SECOND, help="a node's token rate"
    )
    parser.add_argument(
        "--queue-timeout", type=float, default=DEFAULT_QUEUE_TIMEOUT, help="seconds a request may wait for a slot"
    )
    args = parser.parse_args(argv)
    configure_logging()  # logs go to stderr; stdout carries only the ready line
    asyncio.run(_run_standalone(args))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
