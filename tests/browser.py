"""A real headless Chromium for the dashboard tests: Debian's ``chromium``, driven by Playwright.

Playwright never downloads a browser here: it is handed the system one. Without it the tests fail with
a message saying how to install it (``.ci/run`` installs it); they are never skipped.
"""

from __future__ import annotations

import shutil
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from playwright.async_api import BrowserContext, ConsoleMessage, Error, Page, async_playwright

CHROMIUM_FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def chromium_path() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        pytest.fail("the dashboard tests need Debian's chromium: apt-get install -y chromium (.ci/run does this)")
    return path


@dataclass
class Browser:
    """A browser context with its pages' console errors and uncaught exceptions collected."""

    context: BrowserContext
    errors: list[str] = field(default_factory=list)

    async def page(self) -> Page:
        page = await self.context.new_page()

        def console(message: ConsoleMessage) -> None:
            if message.type == "error":
                self.errors.append(f"console: {message.text}")

        def crashed(error: Error) -> None:
            self.errors.append(f"page error: {error}")

        page.on("console", console)
        page.on("pageerror", crashed)
        return page


@asynccontextmanager
async def chromium(tmp_path: Path, *, width: int = 1280, height: int = 900) -> AsyncIterator[Browser]:
    """Headless Chromium with a fresh profile folder under ``tmp_path``."""
    executable = chromium_path()
    async with async_playwright() as playwright:
        context = await playwright.chromium.launch_persistent_context(
            str(tmp_path / "chromium-profile"), executable_path=executable, headless=True, args=CHROMIUM_FLAGS,
            viewport={"width": width, "height": height})
        try:
            yield Browser(context)
        finally:
            await context.close()
