"""The real daemon started from a config file against a chain node that is not there.

What an operator sees before the chain answers: its files are private, secrets lying around readable
are pointed out, and its servers answer (HEAD included) within the connection limits of the config.
"""

from __future__ import annotations

import asyncio
import functools
import os
import socket
import stat
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import structlog
from waiting import wait_for

from dapi.config import Config, load_config
from dapi.daemon import Daemon, resolve_identity
from dapi.runtime.serving import EmbeddedServer

SIGNER_HEX = "a6703374c8c14829bccb1eb13ecdb1ae7703d9e8b3e0a7f44b94bdfcebb0be32"


def closed_port() -> int:
    """A loopback port nothing listens on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def umask_022() -> Iterator[None]:
    old = os.umask(0o022)
    yield
    os.umask(old)


@dataclass
class Setup:
    folder: Path
    config_path: Path
    key_path: Path
    data_dir: Path


def write_setup(tmp_path: Path, *, admin_token: str = "", extra_api: str = "") -> Setup:
    key_path = tmp_path / "signer.key"
    key_path.write_text(SIGNER_HEX + "\n")
    data_dir = tmp_path / "state" / "dapi"
    config_path = tmp_path / "config.yaml"
    config_path.write_text(f"""
api:
  public_server_port: 0
  ml_server_port: 0
  admin_server_port: 0
  bind_host: 127.0.0.1
  poc_callback_url: http://127.0.0.1:0
  admin_token: "{admin_token}"
{extra_api}
chain_node:
  url: http://127.0.0.1:{closed_port()}
  signer_key_file: signer.key
data_dir: {data_dir}
""")
    return Setup(tmp_path, config_path, key_path, data_dir)


async def started(config: Config) -> Daemon:
    daemon = Daemon(config, resolve_identity(config))
    await daemon.start()
    return daemon


@pytest.fixture
async def running() -> AsyncIterator[list[Daemon]]:
    daemons: list[Daemon] = []
    yield daemons
    for daemon in daemons:
        await daemon.stop()


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def secret_warnings(logs: Sequence[Mapping[str, Any]]) -> dict[str, str]:
    return {line["file"]: line["holds"] for line in logs
            if line["log_level"] == "warning" and "readable by group or others" in line["event"]}


async def test_data_dir_and_outbox_are_private(tmp_path: Path, umask_022: None, running: list[Daemon],
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DAPI_SIGNER_KEY", raising=False)
    setup = write_setup(tmp_path)
    daemon = await started(load_config(setup.config_path, env={}))
    running.append(daemon)
    assert mode(setup.data_dir) == 0o700
    outbox_files = [p for p in setup.data_dir.iterdir() if p.name.startswith("outbox.sqlite")]
    assert outbox_files and {p.name: mode(p) for p in outbox_files} == {p.name: 0o600 for p in outbox_files}


async def test_readable_secret_files_are_named_once_each_at_start(tmp_path: Path, umask_022: None,
                                                                  running: list[Daemon],
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DAPI_SIGNER_KEY", raising=False)
    setup = write_setup(tmp_path, admin_token="s3cret")
    os.chmod(setup.key_path, 0o644)
    os.chmod(setup.config_path, 0o640)
    with structlog.testing.capture_logs() as logs:
        running.append(await started(load_config(setup.config_path, env={})))
    assert secret_warnings(logs) == {str(setup.key_path): "signer key", str(setup.config_path): "api.admin_token"}
    assert sum(1 for line in logs if "readable by group or others" in line["event"]) == 2


async def test_private_secret_files_and_a_token_from_the_environment_warn_nothing(
        tmp_path: Path, running: list[Daemon], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DAPI_SIGNER_KEY", raising=False)
    setup = write_setup(tmp_path)
    os.chmod(setup.key_path, 0o600)
    os.chmod(setup.config_path, 0o644)  # readable, but the token is not in it
    with structlog.testing.capture_logs() as logs:
        config = load_config(setup.config_path, env={"DAPI_API__ADMIN_TOKEN": "from-env"})
        running.append(await started(config))
    assert config.api.admin_token == "from-env"
    assert secret_warnings(logs) == {}


async def test_health_checks_with_head(tmp_path: Path, running: list[Daemon],
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DAPI_SIGNER_KEY", raising=False)
    daemon = await started(load_config(write_setup(tmp_path).config_path, env={}))
    running.append(daemon)
    async with httpx.AsyncClient(base_url=daemon.servers["public"].url) as client:
        head = await client.head("/v1/status")
        assert (head.status_code, head.content) == (200, b"")
        assert head.headers["content-type"] == "application/json"


def three_open(server: EmbeddedServer) -> bool:
    return server.open_connections == 3


async def test_connection_limits_from_the_config_hold_on_each_server(tmp_path: Path, running: list[Daemon],
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DAPI_SIGNER_KEY", raising=False)
    setup = write_setup(tmp_path, extra_api="  request_read_timeout: 0.3\n  max_connections: 3")
    config = load_config(setup.config_path, env={})
    assert (config.api.request_read_timeout, config.api.max_connections) == (0.3, 3)
    daemon = await started(config)
    running.append(daemon)
    for name in ("public", "ml", "admin"):
        server = daemon.servers[name]
        held = [await asyncio.open_connection("127.0.0.1", server.port) for _ in range(3)]
        await wait_for(functools.partial(three_open, server), what=f"{name}: three connections open")
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        refused = await asyncio.wait_for(reader.read(), 30)
        writer.close()
        assert refused.startswith(b"HTTP/1.1 503 "), name
        # The held ones never send a request: each is answered 408 and closed once its time is up.
        for reader, writer in held:
            assert (await asyncio.wait_for(reader.read(), 30)).startswith(b"HTTP/1.1 408 "), name
            writer.close()
