"""Write a complete daemon config (DESIGN.md §4.2) for the own participant of a running devnet.

`dapi devnet --no-daemon --write-config PATH` calls this, and `dapi run --config PATH` then drives the
own participant: chain RPC and gRPC of the devnet, the own account's public key, a signer key file
beside the config (relative path, so the pair can be moved together), and the own ML nodes as served
by the devnet's simulated ML node server (one port, a path segment per node).
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from dapi.devnet.genesis import DevnetGenesis
from dapi.devnet.mlnode import SimMLNodeServer

__all__ = [
    "DEVNET_HARDWARE_SYNC_INTERVAL",
    "SIGNER_KEY_FILE",
    "DaemonConfigFiles",
    "DaemonPorts",
    "PortLayout",
    "build_daemon_config",
    "write_daemon_config",
]

SIGNER_KEY_FILE = "signer.key"
# The daemon declares its ML nodes (MsgSubmitHardwareDiff) once per sync interval, 60 s by default;
# devnet epochs are far shorter, and a participant without a hardware record at formation gets its
# nodes in the overflow list (no model, nothing served), so the devnet config syncs sooner.
DEVNET_HARDWARE_SYNC_INTERVAL = 5.0


@dataclass(frozen=True, slots=True)
class DaemonPorts:
    """Where the daemon started with the written config will listen (DESIGN.md §4.1 defaults)."""

    public: int = 9000
    ml: int = 9100
    admin: int = 9200

    @property
    def public_api(self) -> str:
        return f"http://127.0.0.1:{self.public}"

    @property
    def ml_api(self) -> str:
        return f"http://127.0.0.1:{self.ml}"

    @property
    def admin_api(self) -> str:
        return f"http://127.0.0.1:{self.admin}"


@dataclass(frozen=True, slots=True)
class PortLayout:
    """Every port of `dapi devnet`: defaults, or laid out from one base port (`--base-port P`)."""

    daemon: DaemonPorts
    chain_rpc: int
    chain_grpc: int
    mlnodes: int

    @classmethod
    def defaults(cls) -> PortLayout:
        return cls(DaemonPorts(), chain_rpc=26657, chain_grpc=9090, mlnodes=8080)

    @classmethod
    def from_base(cls, base: int) -> PortLayout:
        """P: public API, P+1: ML callbacks, P+2: admin, P+3: chain RPC, P+4: chain gRPC, P+5: sim ML nodes."""
        if not 0 < base <= 65535 - 5:
            raise ValueError(f"base port {base} leaves no room for six ports")
        return cls(DaemonPorts(base, base + 1, base + 2), chain_rpc=base + 3, chain_grpc=base + 4, mlnodes=base + 5)


@dataclass(frozen=True, slots=True)
class DaemonConfigFiles:
    """What :func:`write_daemon_config` wrote: the config file, the signer key file, the daemon's ports."""

    config: Path
    signer_key: Path
    ports: DaemonPorts


def build_daemon_config(
    genesis: DevnetGenesis,
    *,
    chain_rpc: str,
    chain_grpc: str,
    mlnode_host: str,
    mlnode_port: int,
    ports: DaemonPorts,
    data_dir: str,
    use_grpc: bool = True,
    signer_key_file: str = SIGNER_KEY_FILE,
    hardware_sync_interval: float = DEVNET_HARDWARE_SYNC_INTERVAL,
) -> dict[str, Any]:
    """The config as a mapping (YAML-ready); keys as dapi.config reads them."""
    own = genesis.own
    model_args = {m.id: list(m.model_args) for m in genesis.models}
    nodes = []
    for node in own.nodes:
        segment = SimMLNodeServer.segment(node.local_id)
        nodes.append({
            "id": node.local_id,
            "host": mlnode_host,
            "inference_port": mlnode_port,
            "inference_segment": segment,
            "poc_port": mlnode_port,
            "poc_segment": segment,
            "max_concurrent": 500,
            "models": {m: {"args": list(model_args.get(m, []))} for m in node.models},
            "hardware": [{"type": h.type, "count": h.count} for h in node.hardware],
            "version": "",
        })
    return {
        "api": {
            "public_server_port": ports.public,
            "ml_server_port": ports.ml,
            "admin_server_port": ports.admin,
            "poc_callback_url": ports.ml_api,
            "public_url": ports.public_api,
            # Loopback only: this is a devnet on one machine.
            "bind_host": "127.0.0.1",
            "admin_bind_host": "127.0.0.1",
            "admin_token": "",
        },
        "chain_node": {
            "url": chain_rpc,
            "grpc_url": chain_grpc if use_grpc else "",
            "chain_id": genesis.chain_id,
            "account_public_key": own.account_public_key_b64,
            "signer_key_file": signer_key_file,
        },
        "nodes": nodes,
        "data_dir": data_dir,
        "broker": {"hardware_sync_interval": hardware_sync_interval},
    }


def _write_atomically(path: Path, text: str, mode: int) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_daemon_config(
    path: str | os.PathLike[str],
    genesis: DevnetGenesis,
    *,
    chain_rpc: str,
    chain_grpc: str,
    mlnode_host: str,
    mlnode_port: int,
    ports: DaemonPorts | None = None,
    data_dir: str | os.PathLike[str] | None = None,
    use_grpc: bool = True,
) -> DaemonConfigFiles:
    """Write PATH and `signer.key` beside it (hex private key, mode 0600); returns both paths.

    `data_dir` defaults to `dapi-data` beside the config, written as an absolute path because the
    daemon resolves it against its working directory.
    """
    config_path = Path(path).expanduser().resolve()
    config_path.parent.mkdir(parents=True, exist_ok=True)
    ports = ports or DaemonPorts()
    data = Path(data_dir).expanduser().resolve() if data_dir is not None else config_path.parent / "dapi-data"
    config = build_daemon_config(
        genesis, chain_rpc=chain_rpc, chain_grpc=chain_grpc, mlnode_host=mlnode_host, mlnode_port=mlnode_port,
        ports=ports, data_dir=str(data), use_grpc=use_grpc,
    )
    key_path = config_path.parent / SIGNER_KEY_FILE
    _write_atomically(key_path, genesis.own.signer_key.private_key_bytes.hex() + "\n", 0o600)
    header = (
        f"# dapi daemon config for the devnet {genesis.chain_id} (written by dapi devnet --write-config).\n"
        f"# Own participant {genesis.own.address}; signer {genesis.own.signer_address} "
        f"(key in {SIGNER_KEY_FILE}, beside this file).\n"
    )
    _write_atomically(config_path, header + yaml.safe_dump(config, sort_keys=False), 0o644)
    return DaemonConfigFiles(config=config_path, signer_key=key_path, ports=ports)
