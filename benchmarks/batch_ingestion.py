"""Batch ingestion through the ML callback server into the durable outbox.

1. A 100,000-nonce generated batch: time until the 200 (the message is committed to sqlite with
   synchronous=FULL). Floor: json.loads of the same body. Target: at most 3x the floor.
2. Batches per second sustained with 50 concurrent senders (1,000-nonce batches).
"""

from __future__ import annotations

import asyncio
import json
import random
import tempfile
from pathlib import Path
from typing import Any

import httpx

from benchmarks.common import Result, now, raw_request
from dapi.chain.outbox import Outbox
from dapi.runtime.serving import EmbeddedServer
from dapi.server.mlnode.app import create_mlnode_app

ACCOUNT = "gonka1helduaxd0n4q3mp6w8f5vt8x2u6t9whf74jpwe"
PUBLIC_KEY = "02" + "ab" * 32
STAGE = (123456, "A1" * 32)
ROUTE = "/n/secret-of-node-3/v1/poc-batches/generated"  # node 3's own callback URL, as its InitDto gives it


class Nodes:
    def node_id_by_secret(self, secret: str) -> str | None:
        return "node-3" if secret == "secret-of-node-3" else None

    def node_id_by_num(self, node_num: int) -> str | None:
        return f"node-{node_num}"

    def poc_stage_hash(self, height: int) -> str | None:
        return STAGE[1] if height == STAGE[0] else None

    def closed_window(self, stage_height: int, *, validation: bool) -> tuple[int, int] | None:
        return None


class NeverSends:
    async def broadcast(self, raw: bytes) -> Any:
        raise AssertionError("not started")


def batch_body(n: int, seed: int = 1) -> bytes:
    rng = random.Random(seed)
    nonces = sorted(rng.sample(range(50_000_000), n))
    return json.dumps({"public_key": PUBLIC_KEY, "block_hash": STAGE[1], "block_height": STAGE[0],
                       "nonces": nonces, "dist": [rng.random() for _ in range(n)], "node_id": 3}).encode()


async def main() -> list[Result]:
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        async def signer() -> Any:
            raise AssertionError("not started")

        outbox = Outbox(Path(tmp) / "outbox.sqlite", broadcaster=NeverSends(), signer_factory=signer)  # type: ignore[arg-type]
        await outbox.open()
        app = create_mlnode_app(nodes=Nodes(), outbox=outbox, account_address=ACCOUNT, participant_pubkey_hex=PUBLIC_KEY)
        server = EmbeddedServer(app)
        await server.start()
        try:
            body = batch_body(100_000)
            floors, times = [], []
            async with httpx.AsyncClient(base_url=server.url, timeout=60) as client:
                for _ in range(5):
                    started = now()
                    json.loads(body)
                    floors.append(now() - started)
                    started = now()
                    response = await client.post(ROUTE, content=body,
                                                 headers={"content-type": "application/json"})
                    times.append(now() - started)
                    assert response.status_code == 200, response.text
            result = Result("ingest one 100,000-nonce batch", min(times) * 1000, "ms", floor=min(floors) * 1000,
                            target="<= 3x floor", extra={"body_bytes": len(body)})
            result.report()
            results.append(result)

            small = [batch_body(1000, seed) for seed in range(50)]
            count = 0
            connections = [await asyncio.open_connection("127.0.0.1", server.port) for _ in range(50)]
            deadline = now() + 4.0

            async def sender(i: int) -> None:
                nonlocal count
                reader, writer = connections[i]
                while now() < deadline:
                    status, _ = await raw_request(reader, writer, "POST", ROUTE, small[i])
                    assert status == 200
                    count += 1

            started = now()
            await asyncio.gather(*(sender(i) for i in range(50)))
            rate = count / (now() - started)
            for _, writer in connections:
                writer.close()
            counts = await outbox.counts()
            result = Result("sustained ingestion, 50 senders x 1,000-nonce batches", rate, "batches/s",
                            extra={"committed": counts["pending"]})
            result.report()
            results.append(result)
        finally:
            await server.stop()
            await outbox.stop()
    return results


if __name__ == "__main__":
    asyncio.run(main())
