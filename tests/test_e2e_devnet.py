"""The whole product as an operator runs it: ``dapi devnet --epochs 3 --json`` in a subprocess."""

from __future__ import annotations

import json
import subprocess
import sys

from rich.console import Console

from dapi.testbed.live import render
from dapi.testbed.session import DevnetSession


def test_devnet_runs_three_healthy_epochs_with_the_real_daemon() -> None:
    # 0.1 s blocks: the PoC exchange window closes two blocks after generation ends, and with 50 ms blocks
    # a busy machine delays the last batches of a simulated node past it (code 1108, not a daemon fault).
    proc = subprocess.run(
        [sys.executable, "-m", "dapi", "devnet", "--epochs", "3", "--json", "--block-time", "0.1",
         "--base-port", "0", "--participants", "3", "--nodes-per-participant", "4"],
        capture_output=True, text=True, timeout=240,
    )
    lines = [json.loads(line) for line in proc.stdout.splitlines() if line.strip()]
    assert proc.returncode == 0, (proc.stdout[-2000:], proc.stderr[-2000:])
    ready, *epochs, summary = lines
    assert ready["event"] == "ready" and ready["account_address"].startswith("gonka1")
    assert {"chain_rpc", "chain_grpc", "public_api", "ml_api", "admin_api"} <= set(ready)
    assert [e["epoch_index"] for e in epochs] == [1, 2, 3]
    assert summary["event"] == "summary" and summary["healthy"] is True and summary["problems"] == []
    assert summary["epochs_formed"] == [1, 2, 3]
    # Every own ML node followed its allocation in every PoC, and the allocations did put some to serving.
    assert len(summary["poc"]) == 3 * 4 and all(c["ok"] for c in summary["poc"])
    serving = [c for c in summary["poc"] if c["poc_slot"]]
    assert serving and all(c["init_generate_calls"] == 0 and c["state_mid_poc"] == "INFERENCE" for c in serving)
    assert all(c["init_generate_calls"] >= 1 for c in summary["poc"] if not c["poc_slot"])
    # Every accepted batch landed, each with its ML node's id; /v1/models was the snapshots every epoch.
    batches = summary["batches"]
    assert batches["accepted"] > 0 and batches["landed"] == batches["accepted"] and batches["without_node_id"] == 0
    assert batches["refused"] == 0  # each node posted on its own URL, with its stage and the participant's key
    assert [m["equal"] for m in summary["models"]] == [True, True, True]
    assert summary["outbox"]["dead"] == 0


async def test_live_view_shows_the_nodes_and_their_marks() -> None:
    async with DevnetSession(participants=3, nodes_per_participant=2, block_time=0.05) as session:
        await session.devnet.wait_for_epoch(1, timeout=60)
        await session.devnet.wait_until(lambda: (session.daemon.view.snapshot is not None
                                                 and session.daemon.view.snapshot.height >= 55), timeout=30)
        console = Console(record=True, width=140)
        console.print(render(session, {"landed": 3, "pending": 1, "sent": 0, "dead": 0}))
        text = console.export_text()
        dashboard = f"{session.admin_url}/admin/ui"
    assert "node1" in text and "node2" in text and "POC_SLOT" in text
    assert "txs landed 3" in text and "/v1/models" in text and "effective epoch" in text
    assert dashboard in text
