"""The dashboard's JSON and its login, without a browser: the phase bar, what the feed counts, the token rules.

The page itself is driven in a real browser by test_dashboard_browser.py.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest
from broker_fakes import MODEL_A, FakeChain, gov_model, make_broker

from dapi.broker.state import NodeDiagnostics, NodeResponse
from dapi.chain.epochs import DEVNET_EPOCH_PARAMS, Epoch, EpochContext
from dapi.chain.outbox_store import DeadLetter
from dapi.chain.view import ChainSnapshot, ChainView
from dapi.gen.inference.inference.params_pb2 import Params
from dapi.gen.inference.inference.tx_pb2 import MsgSubmitPocBatch
from dapi.metrics import Metrics
from dapi.node_store import NodeStore
from dapi.server.admin.app import create_admin_app
from dapi.server.admin.board import phase_bar
from dapi.server.admin.dashboard import COOKIE, session_value
from dapi.server.admin.feed import DashboardFeed

# -- the phase bar ---------------------------------------------------------------------------------


@pytest.mark.parametrize("epoch", [1, 2, 7])
def test_the_phase_bar_segments_are_the_chains_phases_of_every_height(epoch: int) -> None:
    ctx = EpochContext(epoch, epoch * 40, DEVNET_EPOCH_PARAMS)
    bar = phase_bar(ctx, epoch * 40 + 3)
    assert (bar["start"], bar["end"]) == (ctx.start_of_poc, ctx.next_poc_start)
    # The segments tile the bar with no gap or overlap, and each height's segment has the chain's phase.
    assert bar["segments"][0]["start"] == bar["start"] and bar["segments"][-1]["end"] == bar["end"]
    for left, right in zip(bar["segments"], bar["segments"][1:], strict=False):
        assert left["end"] == right["start"]
    for height in range(bar["start"], bar["end"]):
        segment = next(s for s in bar["segments"] if s["start"] <= height < s["end"])
        assert segment["phase"] == str(ctx.phase_at(height)), height
    passed = {b["name"]: b["passed"] for b in bar["boundaries"]}
    assert passed["PoC start"] and not passed["end of generation"] and not passed["next PoC start"]


def test_the_genesis_bar_runs_from_block_zero_to_the_first_poc() -> None:
    ctx = EpochContext(0, 0, DEVNET_EPOCH_PARAMS)
    bar = phase_bar(ctx, 12)
    assert (bar["start"], bar["end"], bar["position"]) == (0, 40, 12)
    assert [s["phase"] for s in bar["segments"]] == ["Inference"]


# -- the feed --------------------------------------------------------------------------------------


class Board:
    """The broker as the dashboard sees it: no nodes, one phase command."""

    last_command: str | None = "StartPoc"
    epoch_state = None

    def nodes(self) -> list[NodeResponse]:
        return []

    def diagnostics(self) -> dict[str, NodeDiagnostics]:
        return {}


class Letters:
    def __init__(self) -> None:
        self.letters: list[DeadLetter] = []
        self.reads = 0

    async def counts(self) -> dict[str, int]:
        return {"pending": 1, "sent": 2, "landed": 0, "dead": len(self.letters)}

    async def dead_letters(self, limit: int = 100) -> list[DeadLetter]:
        self.reads += 1
        return self.letters[:limit]


def dead_batch(row: int, stage: int) -> DeadLetter:
    body = MsgSubmitPocBatch(poc_stage_start_block_height=stage, batch_id=f"b{row}").SerializeToString()
    return DeadLetter(row, "/inference.inference.MsgSubmitPocBatch", "deliver", 1150, "inference", "too late",
                      None, 1, 0.0, 1_700_000_000.0, body)


def at(view: ChainView, epoch: int, height: int) -> None:
    view.update(ChainSnapshot(height, "", Epoch(epoch, epoch * 40), Params(), DEVNET_EPOCH_PARAMS, True))


async def test_batches_are_counted_against_the_stage_running_when_they_changed() -> None:
    view, metrics, outbox = ChainView(), Metrics(), Letters()
    status: dict[str, Any] = {"components": {}}
    now = [1000.0]
    feed = DashboardFeed(broker=Board(), view=view, outbox=outbox, metrics=metrics, status=lambda: status,
                         point_every=10.0, clock=lambda: now[0])
    metrics.batches_accepted.labels(kind="generated").inc(5)  # before the start: not any stage's
    at(view, 1, 41)
    await feed.sample()
    metrics.batches_accepted.labels(kind="generated").inc(3)
    metrics.txs_landed.labels(type="MsgSubmitPocBatch").inc(2)
    await feed.sample()
    assert outbox.reads == 1  # the baseline; the failure counter has not moved since, so no re-read
    outbox.letters.append(dead_batch(9, 40))
    metrics.tx_failures.labels(stage="deliver", code="1150").inc()  # as the outbox does once the letter is stored
    at(view, 2, 81)
    metrics.batches_accepted.labels(kind="generated").inc(4)
    await feed.sample()
    doc = await feed.dashboard()
    assert outbox.reads == 2  # once more, when the failure counter moved
    stages = {s["stage"]: s for s in doc["poc"]["stages"]}
    assert stages[40] == {"stage": 40, "accepted": 3, "landed": 2, "dead_lettered": 0}
    assert stages[80] == {"stage": 80, "accepted": 4, "landed": 0, "dead_lettered": 1}
    assert doc["poc"]["accepted"] == 12 and doc["poc"]["dead_lettered"] == 1
    assert doc["outbox"]["depth"] == 3
    assert doc["outbox"]["dead_letters"][0]["poc_stage"] == 40 and doc["outbox"]["dead_letters"][0]["code"] == 1150
    assert doc["chain"]["policy"] == {"command": "StartPoc", "decisions": {}}
    # Nothing reports inference or validation yet: the sections are null, not zeros.
    assert doc["inference"] is None and doc["validation"] is None


async def test_inference_and_validation_are_shown_and_charted_once_the_daemon_reports_them() -> None:
    view, metrics = ChainView(), Metrics()
    inference = {"ta": {"ok": 10, "failed": {"timeout": 2}, "p50_ms": 120.0, "p99_ms": 900.0},
                 "executor": {"ok": 5, "failed": {}, "p50_ms": 80.0, "p99_ms": 200.0}}
    validation = {"selected": 4, "pending": 1, "sent": 3, "landed": 2, "failed": 0, "required": 4}
    status: dict[str, Any] = {"components": {"inference": inference, "validation": validation}}
    now = [1000.0]
    feed = DashboardFeed(broker=Board(), view=view, outbox=None, metrics=metrics, status=lambda: status,
                         point_every=10.0, clock=lambda: now[0])
    at(view, 1, 45)
    await feed.sample()
    now[0] += 10.0
    status["components"]["inference"] = {**inference, "ta": {**inference["ta"], "ok": 40}}  # 30 more in 10 s
    status["components"]["validation"] = {**validation, "landed": 4}
    await feed.sample()
    doc = await feed.dashboard()
    assert doc["inference"]["ta"]["ok"] == 40 and doc["validation"]["required"] == 4
    history = feed.history()
    assert [p["requests_per_s"] for p in history["points"]] == [3.0]
    assert history["points"][0]["p99_ms"] == 900.0
    assert history["epochs"][-1]["epoch"] == 1 and history["epochs"][-1]["validations"]["landed"] == 2


async def test_the_validation_services_own_epochs_and_claim_are_charted_and_its_other_keys_ignored() -> None:
    # The shape of ValidationService.status(): counters, flags, per-epoch counts and the last claim.
    validation = {"enabled": True, "healthy": True, "selected": 6, "pending": 0, "sent": 6, "landed": 5, "failed": 1,
                  "required": 6, "gone": 0, "epoch": 3, "scanned_to": 130, "claim_waiting": False,
                  "by_epoch": {"2": {"required": 4, "sent": 4, "landed": 4, "failed": 0},
                               "3": {"required": 2, "sent": 2, "landed": 1, "failed": 1}},
                  "claim": {"epoch": 2, "code": 0, "amount": 1234, "result": "paid", "paid": True, "forced": False,
                            "missing_validations": 0, "state": "landed"}}
    status: dict[str, Any] = {"components": {"validation": validation}}
    view = ChainView()
    feed = DashboardFeed(broker=Board(), view=view, outbox=None, metrics=Metrics(), status=lambda: status)
    at(view, 3, 125)
    await feed.sample()
    doc = await feed.dashboard()
    assert doc["validation"] == {"selected": 6, "pending": 0, "sent": 6, "landed": 5, "failed": 1, "required": 6,
                                 "enabled": True}
    epochs = {e["epoch"]: e for e in feed.history()["epochs"]}
    assert epochs[2]["validations"] == {"sent": 4, "landed": 4, "failed": 0, "required": 4}
    assert epochs[3]["validations"]["failed"] == 1
    assert (epochs[2]["claim_sent"], epochs[2]["claim_landed"], epochs[2]["reward"]) == (True, True, 1234)
    assert epochs[3]["reward"] is None


# -- the page and the token ------------------------------------------------------------------------


class Source:
    async def dashboard(self) -> dict[str, Any]:
        return {"generated_at": "now"}

    def history(self) -> dict[str, Any]:
        return {"point_seconds": 10.0, "points": [], "epochs": []}


@pytest.fixture
async def admin(tmp_path: Path) -> Any:
    broker = make_broker(FakeChain([gov_model(MODEL_A)]), tmp_path)
    app = create_admin_app(broker=broker, store=NodeStore(tmp_path / "nodes.json"), token="s3cret",
                           dashboard=Source())
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://admin") as client:
        yield client


async def test_without_a_token_configured_the_page_and_its_files_are_served(tmp_path: Path) -> None:
    broker = make_broker(FakeChain([gov_model(MODEL_A)]), tmp_path)
    app = create_admin_app(broker=broker, store=NodeStore(tmp_path / "nodes.json"), dashboard=Source())
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://admin") as client:
        page = await client.get("/admin/ui")
        assert page.status_code == 200 and 'src="/admin/ui/dashboard.js"' in page.text
        assert "frame-ancestors 'none'" in page.headers["content-security-policy"]
        js = await client.get("/admin/ui/dashboard.js")
        assert js.status_code == 200 and js.headers["content-type"].startswith("text/javascript")
        assert (await client.get("/admin/ui/dashboard.css")).headers["content-type"].startswith("text/css")
        assert (await client.get("/admin/ui/..%2Fapp.py")).status_code == 404
        assert (await client.get("/admin/v1/dashboard")).json() == {"generated_at": "now"}
    paths = app.openapi()["paths"]
    assert "/admin/v1/dashboard" in paths and "/admin/v1/dashboard/history" in paths
    assert "/admin/ui" not in paths


async def test_the_page_asks_for_the_token_and_trades_it_for_a_session_cookie(admin: httpx.AsyncClient) -> None:
    refused = await admin.get("/admin/ui")
    assert refused.status_code == 401 and 'action="/admin/ui/login"' in refused.text
    assert (await admin.get("/admin/ui/dashboard.js")).status_code == 401
    assert (await admin.get("/admin/v1/dashboard")).status_code == 401
    assert (await admin.get("/admin/ui", params={"token": "wrong"})).status_code == 401

    entered = await admin.get("/admin/ui", params={"token": "s3cret"})
    assert entered.status_code == 303 and entered.headers["location"] == "/admin/ui"
    cookie = entered.headers["set-cookie"]
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie and "Path=/admin" in cookie
    assert "s3cret" not in cookie and session_value("s3cret") in cookie

    form = await admin.post("/admin/ui/login", content="token=s3cret",
                            headers={"content-type": "application/x-www-form-urlencoded"})
    assert form.status_code == 303 and session_value("s3cret") in form.headers["set-cookie"]
    wrong = await admin.post("/admin/ui/login", content="token=nope",
                             headers={"content-type": "application/x-www-form-urlencoded"})
    assert wrong.status_code == 401 and "set-cookie" not in wrong.headers


async def test_the_session_cookie_reads_freely_but_writes_only_with_the_pages_header(admin: httpx.AsyncClient) -> None:
    admin.cookies.set(COOKIE, session_value("s3cret"))
    assert (await admin.get("/admin/ui")).status_code == 200
    assert (await admin.get("/admin/v1/dashboard/history")).status_code == 200
    assert (await admin.get("/admin/v1/nodes")).status_code == 200
    assert (await admin.post("/admin/v1/nodes/ghost/disable")).status_code == 401
    # With the page's header the request reaches the route (an unknown node: 404, not 401).
    assert (await admin.post("/admin/v1/nodes/ghost/disable", headers={"X-Dapi-UI": "1"})).status_code == 404
    # A cookie made for another token is no session.
    admin.cookies.set(COOKIE, session_value("old-token"))
    assert (await admin.get("/admin/v1/nodes")).status_code == 401
