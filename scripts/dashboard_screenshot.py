"""The README's screenshot of the operator dashboard: a devnet under load at its third PoC start, in Chromium.

    .venv/bin/python scripts/dashboard_screenshot.py [docs/dashboard.png]

Needs Debian's ``chromium`` (``apt-get install -y chromium``) and the test extras (Playwright).
"""

from __future__ import annotations

import asyncio
import shutil
import sys
import tempfile
from pathlib import Path

from playwright.async_api import async_playwright

from dapi.server.admin.feed import DashboardFeed
from dapi.testbed.session import DevnetSession

BLOCK = 0.2
EPOCH = 40
FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync"]


async def main(out: Path) -> None:
    executable = shutil.which("chromium")
    if executable is None:
        raise SystemExit("chromium not found: apt-get install -y chromium")
    DashboardFeed.point_every = 2.0  # the devnet runs an epoch in seconds: chart points every 2 s, not 10 s
    async with DevnetSession(participants=3, nodes_per_participant=4, block_time=BLOCK) as session:
        session.start_load(5, seed=7)  # client traffic through the daemon as TA, as `dapi devnet --load 5`
        # Epoch 2's PoC is the first run with POC_SLOT allocations: some nodes keep serving, the rest mine.
        boundary = 3 * EPOCH
        with tempfile.TemporaryDirectory() as profile:
            async with async_playwright() as playwright:
                context = await playwright.chromium.launch_persistent_context(
                    profile, executable_path=executable, headless=True, args=FLAGS,
                    viewport={"width": 1280, "height": 900})
                page = await context.new_page()
                await page.goto(f"{session.admin_url}/admin/ui?refresh=500")
                await page.wait_for_function(
                    f"() => Number(document.getElementById('phase-bar').dataset.start) === {boundary}"
                    " && document.querySelectorAll('td.intended.POC').length > 0", timeout=120_000, polling=50)
                await page.screenshot(path=str(out), full_page=True)
                await context.close()
    print(f"wrote {out}")


if __name__ == "__main__":
    asyncio.run(main(Path(sys.argv[1] if len(sys.argv) > 1 else "docs/dashboard.png")))
