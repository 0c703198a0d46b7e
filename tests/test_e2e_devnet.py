"""The whole product as an operator runs it: ``dapi devnet --epochs 3 --json --load 5`` in a subprocess, with
gonka-openai (the PyPI client) completing a chat through it from the ready line's ``client``."""

from __future__ import annotations

import json
import subprocess
import sys

from rich.console import Console

from dapi.testbed.live import render
from dapi.testbed.session import DevnetSession

PHASES = ["PoCGenerate", "PoCGenerateWindDown", "PoCValidate", "PoCValidateWindDown", "Inference"]


def _chat(client: dict[str, str]) -> tuple[str, str]:
    from gonka_openai import Endpoint, GonkaOpenAI

    openai = GonkaOpenAI(gonka_private_key="0x" + client["private_key"],
                         endpoints=[Endpoint(url=client["endpoint"], address=client["transfer_address"])])
    answer = openai.chat.completions.create(model="Qwen/QwQ-32B", max_tokens=12,
                                            messages=[{"role": "user", "content": "Hello from the ready line"}])
    return answer.id, answer.choices[0].message.content or ""


def test_devnet_runs_three_healthy_epochs_with_the_real_daemon() -> None:
    # 0.2 s blocks: the PoC exchange window closes two blocks after generation ends, and with faster blocks
    # a busy machine (the load, other tests) delays the last batches of a simulated node past it (code 1108,
    # not a daemon fault: seen at 0.1 s with a second devnet running beside it).
    proc = subprocess.Popen(
        [sys.executable, "-m", "dapi", "devnet", "--epochs", "3", "--json", "--block-time", "0.2",
         "--base-port", "0", "--participants", "3", "--nodes-per-participant", "4", "--load", "5",
         "--load-seed", "7"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        assert proc.stdout is not None
        ready = json.loads(proc.stdout.readline())
        first_epoch = json.loads(proc.stdout.readline())
        # While it runs, the ready line is all a client needs (DESIGN.md §8).
        chat_id, content = _chat(ready["client"])
        rest, err = proc.communicate(timeout=240)
    finally:
        if proc.poll() is None:
            proc.kill()
    lines = [first_epoch, *(json.loads(line) for line in rest.splitlines() if line.strip())]
    problems = [line for line in err.splitlines() if '"level": "error"' in line]
    assert proc.returncode == 0, (lines[-1] if lines else rest[-2000:], problems[:5])
    *epochs, summary = lines
    assert len(chat_id) == 88 and content  # the id is the client's signature (64 bytes, base64)
    assert ready["client"]["endpoint"] == ready["public_api"] + "/v1"
    assert ready["client"]["transfer_address"] == ready["account_address"]
    assert ready["event"] == "ready" and ready["account_address"].startswith("gonka1")
    assert {"chain_rpc", "chain_grpc", "public_api", "ml_api", "admin_api"} <= set(ready)
    assert [e["epoch_index"] for e in epochs] == [1, 2, 3]
    assert summary["event"] == "summary" and summary["healthy"] is True and summary["problems"] == [], summary
    assert summary["epochs_formed"] == [1, 2, 3]
    # Every own ML node followed its allocation in every PoC, and the allocations did put some to serving.
    assert len(summary["poc"]) == 3 * 4 and all(c["ok"] for c in summary["poc"]), summary["poc"]
    serving = [c for c in summary["poc"] if c["poc_slot"]]
    assert serving and all(c["init_generate_calls"] == 0 and c["state_mid_poc"] == "INFERENCE" for c in serving)
    assert all(c["init_generate_calls"] >= 1 for c in summary["poc"] if not c["poc_slot"])
    # Every accepted batch landed, each with its ML node's id; /v1/models was the snapshots every epoch.
    batches = summary["batches"]
    assert batches["accepted"] > 0 and batches["landed"] == batches["accepted"] and batches["without_node_id"] == 0, \
        batches
    assert batches["refused"] == 0  # each node posted on its own URL, with its stage and the participant's key
    assert [m["equal"] for m in summary["models"]] == [True, True, True]
    assert summary["outbox"]["dead"] == 0
    # The load: every epoch reports each phase; PoC phases were served by POC_SLOT nodes (weight policy).
    for event in epochs:
        assert list(event["inference"]) == PHASES
        assert event["invalidated"] == {}  # every peer is honest
        assert set(event["validations"]) == {"required", "sent", "landed", "failed"}
        for tally in event["inference"].values():
            assert tally["sent"] == tally["ok"] + tally["failed"]
    assert summary["invalidated"] == {}
    # The claims pay: the last answered claim (epoch 1 or 2 by the end of epoch 3) paid something.
    assert epochs[-1]["claim"]["code"] == 0 and epochs[-1]["claim"]["amount"] > 0, epochs[-1]["claim"]
    totals = summary["inference"]
    assert list(totals) == PHASES
    assert totals["Inference"]["ok"] > 0 and totals["Inference"]["p50_ms"] is not None
    poc_ok = sum(totals[p]["ok"] for p in PHASES[:4])
    assert poc_ok > 0, totals


async def test_live_view_shows_the_nodes_and_their_marks() -> None:
    async with DevnetSession(participants=3, nodes_per_participant=2, block_time=0.05) as session:
        await session.devnet.wait_for_epoch(1, timeout=60)
        load = session.start_load(20, seed=3)
        await session.devnet.wait_until(lambda: (session.daemon.view.snapshot is not None
                                                 and session.daemon.view.snapshot.height >= 55
                                                 and load.live()["ok"] > 0), timeout=30)
        console = Console(record=True, width=140)
        console.print(render(session, {"landed": 3, "pending": 1, "sent": 0, "dead": 0}))
        text = console.export_text()
        dashboard = f"{session.admin_url}/admin/ui"
    assert "node1" in text and "node2" in text and "POC_SLOT" in text
    assert "txs landed 3" in text and "/v1/models" in text and "effective epoch" in text
    assert "inference load 20/s" in text and "PoCGenerate" in text and "Inference" in text
    assert "daemon as TA: ok" in text and "as executor: ok" in text
    assert dashboard in text
