"""The operator dashboard in a real headless Chromium, against the real daemon on a running devnet.

Blocks are 0.2 s, so the genesis epoch's Inference runs to block 40, where the first PoC starts (every
node mines in it: genesis gives no POC_SLOT) and ends at block 51. The page is opened with
``?refresh=200`` so it polls five times a second.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from browser import chromium
from playwright.async_api import Dialog, Page

from dapi.broker.state import NodeStatus
from dapi.config import load_config
from dapi.daemon import Daemon, resolve_identity
from dapi.devnet.daemon_config import DaemonPorts
from dapi.devnet.network import SimulatedNetwork
from dapi.server.admin.dashboard import COOKIE
from dapi.testbed.session import DevnetSession

BLOCK = 0.2
FIRST_POC = 40
TIMEOUT_MS = 60_000


@pytest.fixture
async def session() -> AsyncIterator[DevnetSession]:
    async with DevnetSession(participants=3, nodes_per_participant=3, block_time=BLOCK) as s:
        yield s


def own_node_ids(s: DevnetSession) -> list[str]:
    return [n.id for n in s.daemon.config.nodes]


async def row_cell(page: Page, node_id: str, cell: str) -> str:
    return await page.locator(f'tr[data-node="{node_id}"] td.{cell}').inner_text()


async def test_the_page_shows_every_own_node_and_the_phase_bar_crosses_a_poc_boundary(
        session: DevnetSession, tmp_path: Path) -> None:
    ids = own_node_ids(session)
    assert len(ids) == 3
    async with chromium(tmp_path) as browser:
        page = await browser.page()
        response = await page.goto(f"{session.admin_url}/admin/ui?refresh=200")
        assert response is not None and response.status == 200
        # Every own node has a row with its id; before the first PoC every one of them serves inference.
        await page.wait_for_function(
            "ids => ids.every(id => { const r = document.querySelector(`tr[data-node='${id}'] td.current`);"
            " return r && r.textContent === 'INFERENCE'; })", arg=ids, timeout=TIMEOUT_MS)
        assert await page.locator("#nodes tbody tr").count() == len(ids)
        bar = page.locator("#phase-bar")
        # Still in the genesis epoch: the bar runs from block 0 to the first PoC start, before it.
        assert await bar.get_attribute("data-end") == str(FIRST_POC)
        before = int(await bar.get_attribute("data-position") or -1)
        assert before < FIRST_POC
        assert await page.locator("#phase").inner_text() == "Inference"

        # Across the boundary: the bar now starts at the PoC start, the marker is past it, the phase is PoC,
        # and every node (none has POC_SLOT in the first PoC) is told to mine.
        await page.wait_for_function(
            f"() => {{ const b = document.getElementById('phase-bar');"
            f" return b.dataset.start === '{FIRST_POC}' && Number(b.dataset.position) >= {FIRST_POC}"
            f" && document.getElementById('phase').textContent.startsWith('PoC'); }}", timeout=TIMEOUT_MS)
        assert await bar.get_attribute("data-end") == str(FIRST_POC * 2)
        assert await page.locator("#epoch").inner_text() == "1"
        await page.wait_for_function(
            "ids => ids.every(id => document.querySelector(`tr[data-node='${id}'] td.intended`)"
            ".textContent === 'POC')", arg=ids, timeout=TIMEOUT_MS)
        assert "PoC start 40" in await page.locator("#boundaries li.passed").first.inner_text()
        # The phase bar keeps moving: a later poll shows the marker further on.
        at_poc = int(await bar.get_attribute("data-position") or -1)
        await page.wait_for_function(f"() => Number(document.getElementById('phase-bar').dataset.position) > {at_poc}",
                                     timeout=TIMEOUT_MS)
        # Inference and validation as the daemon's status reports them; a section it does not report says so.
        components = session.daemon.status()["components"]
        inference, validation = (await page.locator("#inference").inner_text(),
                                 await page.locator("#validation").inner_text())
        assert ("as transfer agent ok" in inference) == ("inference" in components)
        assert ("not available" in inference) == ("inference" not in components)
        assert ("not available" in validation) == ("validation" not in components)
        # On a phone-sized screen nothing but the node table (which scrolls inside its card) is wider than it.
        await page.set_viewport_size({"width": 390, "height": 800})
        overflow = await page.evaluate("() => document.documentElement.scrollWidth - window.innerWidth")
        assert overflow <= 0
        await page.screenshot(path=str(tmp_path / "dashboard.png"), full_page=True)
    assert browser.errors == []


async def test_disabling_a_node_from_the_page_asks_first_and_stops_it_at_the_next_poc(
        session: DevnetSession, tmp_path: Path) -> None:
    target, *others = own_node_ids(session)
    broker = session.daemon.broker
    assert broker is not None
    async with chromium(tmp_path) as browser:
        page = await browser.page()
        await page.goto(f"{session.admin_url}/admin/ui?refresh=200")
        button = page.locator(f'tr[data-node="{target}"] td.admin button')
        await button.wait_for(timeout=TIMEOUT_MS)
        assert await button.inner_text() == "Disable"

        asked: list[str] = []

        async def dismiss(dialog: Dialog) -> None:
            asked.append(dialog.message)
            await dialog.dismiss()

        page.once("dialog", dismiss)
        await button.click()
        assert asked and target in asked[0]
        # Two more polls later (time for a request the click might have sent), the node is still enabled.
        polls = int(await page.evaluate("() => document.body.dataset.polls"))
        await page.wait_for_function(f"() => Number(document.body.dataset.polls) >= {polls + 2}", timeout=TIMEOUT_MS)
        node = broker.node(target)
        assert node is not None and node.state.admin_state.enabled  # dismissed: nothing changed

        async def accept(dialog: Dialog) -> None:
            asked.append(dialog.message)
            await dialog.accept()

        page.once("dialog", accept)
        await button.click()
        await page.wait_for_function(
            f"() => document.querySelector(`tr[data-node='{target}'] td.admin`).textContent.startsWith('disabled')",
            timeout=TIMEOUT_MS)
        node = broker.node(target)
        assert node is not None and not node.state.admin_state.enabled
        # A disable applies from the next epoch: at the PoC start the node is intended STOPPED, the others mine.
        await page.wait_for_function(
            f"() => document.querySelector(`tr[data-node='{target}'] td.intended`).textContent === 'STOPPED'",
            timeout=TIMEOUT_MS)
        node = broker.node(target)
        assert node is not None and node.state.intended_status is NodeStatus.STOPPED
        assert session.daemon.view.snapshot is not None and session.daemon.view.snapshot.height >= FIRST_POC
        for other in others:
            assert await row_cell(page, other, "intended") != "STOPPED"
        assert await button.inner_text() == "Enable"
    assert browser.errors == []


TOKEN = "dashboard-s3cret"


@pytest.fixture
async def guarded(tmp_path: Path) -> AsyncIterator[Daemon]:
    """The real daemon with ``api.admin_token`` set, on a devnet."""
    async with SimulatedNetwork(participants=2, nodes_per_participant=2, block_time=BLOCK) as devnet:
        path = tmp_path / "config.yaml"
        devnet.write_daemon_config(path, ports=DaemonPorts(0, 0, 0), data_dir=tmp_path / "data")
        config = load_config(path, env={})
        config.api.admin_token = TOKEN
        daemon = Daemon(config, resolve_identity(config))
        await daemon.start()
        try:
            yield daemon
        finally:
            await daemon.stop()


async def test_with_an_admin_token_the_page_and_its_json_are_refused_without_it(
        guarded: Daemon, tmp_path: Path) -> None:
    admin = guarded.servers["admin"].url
    async with chromium(tmp_path) as browser:
        page = await browser.page()
        refused = await page.goto(f"{admin}/admin/ui")
        assert refused is not None and refused.status == 401
        assert await page.locator("h1").inner_text() == "Admin token required"
        assert await page.locator("#nodes").count() == 0
        wrong = await page.goto(f"{admin}/admin/ui?token=not-it")
        assert wrong is not None and wrong.status == 401
        json_status = await page.evaluate("async () => (await fetch('/admin/v1/dashboard')).status")
        assert json_status == 401

        # The login form takes the token, answers with a session cookie and lands on the dashboard.
        await page.fill("#token", TOKEN)
        await page.click("button[type=submit]")
        await page.wait_for_url(f"{admin}/admin/ui")
        await page.locator("#nodes tbody tr[data-node]").first.wait_for(timeout=TIMEOUT_MS)
        cookies = await browser.context.cookies(f"{admin}/admin/ui")
        session_cookie = next(c for c in cookies if c["name"] == COOKIE)
        assert session_cookie["httpOnly"] and session_cookie["value"] != TOKEN
        assert TOKEN not in page.url

    async with httpx.AsyncClient(base_url=admin) as client:
        client.cookies.set(COOKIE, session_cookie["value"])
        assert (await client.get("/admin/v1/dashboard")).status_code == 200
        # A write with only the cookie (what a forged cross-site form could send) is refused; the page's
        # own header makes it a request another site cannot send without a CORS preflight.
        node = guarded.config.nodes[0].id
        assert (await client.post(f"/admin/v1/nodes/{node}/disable")).status_code == 401
        ok = await client.post(f"/admin/v1/nodes/{node}/enable", headers={"X-Dapi-UI": "1"})
        assert ok.status_code == 200
