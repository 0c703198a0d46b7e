"""The real PyPI client against the daemon as Transfer Agent (reference/inference.md §6; DESIGN.md §8).

gonka-openai 0.2.6 (the test extra) signs the sha256 hex of the body, 0.2.3 the raw body; the daemon accepts
both, and so does the devnet chain. 0.2.3 cannot be installed beside 0.2.6, so it is installed on first use
into a folder of the venv (`<sys.prefix>/gonka-openai-0.2.3`, its dependencies are 0.2.6's) and run in a
subprocess with that folder first on PYTHONPATH. Both complete a chat as JSON and as a stream, and both
inferences land on chain with Start and Finish.
"""

from __future__ import annotations

import asyncio
import importlib.metadata
import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from inference_msgs import QWQ
from waiting import wait_for

from dapi.devnet.genesis import load_genesis
from dapi.devnet.ledger.inferences import InferenceStatus
from dapi.inference.signatures import ClientScheme, verify_dev_signature
from dapi.testbed.session import DevnetSession

pytestmark = pytest.mark.asyncio(loop_scope="module")

BLOCK = 0.1
READY = 56  # epoch 1 effective, Inference phase
OLD_VERSION = "0.2.3"
OLD_DIR = Path(sys.prefix) / f"gonka-openai-{OLD_VERSION}"

# Both calls of one client version; prints {"version", "json", "stream"} as one JSON line.
CLIENT_SCRIPT = """
import importlib.metadata, json, sys
from gonka_openai import GonkaOpenAI, Endpoint
url, key, ta, model = sys.argv[1:5]
client = GonkaOpenAI(gonka_private_key=key, endpoints=[Endpoint(url=url, address=ta)])
def chat(stream):
    r = client.chat.completions.create(model=model, messages=[{"role": "user", "content": "Hello there"}],
                                       max_tokens=20, stream=stream)
    return [c.model_dump() for c in r] if stream else r.model_dump()
out = {"version": importlib.metadata.version("gonka-openai"), "json": chat(False), "stream": chat(True)}
print(json.dumps(out))
"""


def install_old_client() -> Path:
    """gonka-openai 0.2.3 in the venv's cache folder (installed once; a half-done install is never used)."""
    if (OLD_DIR / "gonka_openai").is_dir():
        return OLD_DIR
    staging = Path(tempfile.mkdtemp(prefix=".gonka-openai-", dir=sys.prefix))
    try:
        subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target", str(staging),
                        f"gonka-openai=={OLD_VERSION}"], check=True, capture_output=True, timeout=300)
        try:
            staging.rename(OLD_DIR)
        except OSError:  # another run got there first
            if not (OLD_DIR / "gonka_openai").is_dir():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return OLD_DIR


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def session() -> AsyncIterator[DevnetSession]:
    await asyncio.to_thread(install_old_client)
    genesis = load_genesis(None, participants=3, nodes_per_participant=2, block_time=BLOCK)
    async with DevnetSession(genesis=genesis, block_time=BLOCK) as s:
        s.devnet.ledger.set_inference_url(s.devnet.own.address, s.public_url)
        await s.devnet.wait_for_height(READY, timeout=60)
        await wait_for(lambda: s.daemon.view.snapshot is not None and s.daemon.view.snapshot.height >= READY,
                       timeout=30, what="daemon at the ready height")
        yield s


def client_args(s: DevnetSession) -> list[str]:
    key = "0x" + s.devnet.genesis.clients[0].key.private_key_bytes.hex()
    return [s.public_url + "/v1", key, s.devnet.own.address, QWQ]


def run_in_process(args: list[str]) -> dict[str, Any]:
    """The client script with the installed gonka-openai (0.2.6), in this process (called in a thread)."""
    from gonka_openai import Endpoint, GonkaOpenAI

    url, key, ta, model = args
    client = GonkaOpenAI(gonka_private_key=key, endpoints=[Endpoint(url=url, address=ta)])

    def chat(stream: bool) -> Any:
        r = client.chat.completions.create(model=model, messages=[{"role": "user", "content": "Hello there"}],
                                           max_tokens=20, stream=stream)
        return [c.model_dump() for c in r] if stream else r.model_dump()

    return {"version": importlib.metadata.version("gonka-openai"), "json": chat(False), "stream": chat(True)}


async def run_old_client(args: list[str]) -> dict[str, Any]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(OLD_DIR), os.environ.get("PYTHONPATH", "")])}
    proc = await asyncio.create_subprocess_exec(sys.executable, "-c", CLIENT_SCRIPT, *args, env=env,
                                                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), timeout=120)
    assert proc.returncode == 0, err.decode()[-3000:]
    result: dict[str, Any] = json.loads(out.decode().strip().splitlines()[-1])
    return result


def serve_only_by(s: DevnetSession, executor: str) -> None:
    """Make the daemon as TA draw `executor` (every other participant avoided for 1,000 blocks)."""
    ta = s.daemon.inference.ta if s.daemon.inference else None
    assert ta is not None
    for participant in s.devnet.genesis.participants:
        ta.avoid(participant.address, 0 if participant.address == executor else 1000)


async def check_served(s: DevnetSession, result: dict[str, Any], scheme: ClientScheme, executor: str) -> None:
    """Both answers carry their inference id, both inferences landed, signed with the client's `scheme`."""
    answer, chunks = result["json"], result["stream"]
    assert answer["choices"][0]["message"]["content"]
    assert chunks and len({c["id"] for c in chunks}) == 1
    assert "".join(c["choices"][0]["delta"]["content"] or "" for c in chunks if c["choices"])
    client = s.devnet.genesis.clients[0].key
    inferences = s.devnet.ledger.state.inferences
    for inference_id in (answer["id"], chunks[0]["id"]):
        def done(inference_id: str = inference_id) -> bool:
            record = inferences.get(inference_id)
            return record is not None and bool(record.requested_by) and record.status in (
                InferenceStatus.FINISHED, InferenceStatus.VALIDATED)

        await s.devnet.wait_until(done, timeout=30, what=f"inference {inference_id[:12]} on chain")
        record = inferences[inference_id]
        assert record.assigned_to == record.executed_by == executor
        assert (record.requested_by, record.transferred_by) == (client.address, s.devnet.own.address)
        assert verify_dev_signature(client.public_key, record.original_prompt.encode(), record.request_timestamp,
                                    record.transferred_by, inference_id) is scheme


async def test_gonka_openai_0_2_6_signs_the_body_hash_and_is_served_by_the_daemon_itself(
        session: DevnetSession) -> None:
    own = session.devnet.own.address
    serve_only_by(session, own)
    result = await asyncio.to_thread(run_in_process, client_args(session))
    assert result["version"] == "0.2.6"
    await check_served(session, result, ClientScheme.SHA256_HEX, own)


async def test_gonka_openai_0_2_3_signs_the_raw_body_and_is_served_by_a_peer(session: DevnetSession) -> None:
    peer = session.devnet.genesis.peers[0].address
    serve_only_by(session, peer)
    result = await run_old_client(client_args(session))
    assert result["version"] == OLD_VERSION
    await check_served(session, result, ClientScheme.RAW, peer)
