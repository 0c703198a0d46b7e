"""Child process of the fan-out benchmark: N simulated ML nodes behind one server (path segments)."""

from __future__ import annotations

import argparse
import asyncio
import json

from dapi.devnet.mlnode import SimMLNodeServer


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--nodes", type=int, default=1000)
    args = parser.parse_args()
    # Batches would go to a callback nobody serves here: make the sender wait for an hour.
    async with SimMLNodeServer(batch_interval=3600.0) as server:
        for i in range(args.nodes):
            server.add_node(f"n{i}")
        print(json.dumps({"port": server.port}), flush=True)
        await asyncio.Event().wait()


if __name__ == "__main__":
    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        pass
