"""``python -m benchmarks``: every benchmark, one after the other, each with its floor measured in the same run."""

from __future__ import annotations

import asyncio
import json
import platform
import sys

from benchmarks import batch_ingestion, epoch_sync, fanout, inference, public_api
from benchmarks.common import RESULTS


async def main() -> None:
    print(f"python {platform.python_version()} on {platform.machine()}, {__import__('os').cpu_count()} cores",
          flush=True)
    for module in (fanout, public_api, batch_ingestion, epoch_sync, inference):
        await module.main()
    if "--json" in sys.argv:
        print(json.dumps(RESULTS, indent=1))


if __name__ == "__main__":
    asyncio.run(main())
