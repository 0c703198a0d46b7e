"""Every public class says what it is for; the main components also document their constructor parameters.

Read from the source with ``ast`` (nothing is imported), so a module that fails to import still gets checked.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "dapi"

# Generated protobuf code: documented by the .proto files it comes from.
GENERATED = "dapi/gen/"


# The components other code constructs: their docstrings say what each constructor parameter is for.
MAIN_COMPONENTS = (
    ("dapi/broker/broker.py", "Broker"),
    ("dapi/broker/reconciler.py", "Reconciler"),
    ("dapi/broker/worker.py", "NodeWorker"),
    ("dapi/broker/poller.py", "StatusPoller"),
    ("dapi/broker/hardware_sync.py", "HardwareSync"),
    ("dapi/daemon.py", "Daemon"),
    ("dapi/event_listener/dispatcher.py", "Dispatcher"),
    ("dapi/event_listener/follower.py", "BlockFollower"),
    ("dapi/event_listener/subscription.py", "ChainSubscription"),
    ("dapi/chain/outbox.py", "Outbox"),
    ("dapi/chain/client.py", "ChainClient"),
    ("dapi/chain/rpc.py", "CometRPC"),
    ("dapi/chain/query.py", "ChainQuery"),
    ("dapi/mlnodeclient/client.py", "MLNodeClient"),
    ("dapi/poc/seeds.py", "SeedManager"),
    ("dapi/poc/validation.py", "BatchValidator"),
    ("dapi/node_store.py", "NodeStore"),
    ("dapi/runtime/serving.py", "EmbeddedServer"),
    ("dapi/devnet/network.py", "SimulatedNetwork"),
    ("dapi/devnet/peers.py", "PeerSimulator"),
    ("dapi/testbed/session.py", "DevnetSession"),
)


def _source_files() -> list[str]:
    files = []
    for path in sorted(PACKAGE.rglob("*.py")):
        name = path.relative_to(ROOT).as_posix()
        if name.startswith(GENERATED):
            continue
        files.append(name)
    return files


def _public_classes(name: str) -> list[ast.ClassDef]:
    tree = ast.parse((ROOT / name).read_text(), filename=name)
    return [node for node in tree.body if isinstance(node, ast.ClassDef) and not node.name.startswith("_")]


def test_the_walk_finds_the_package() -> None:
    files = _source_files()
    assert "dapi/daemon.py" in files
    assert not any(f.startswith(GENERATED) for f in files)


def test_every_public_class_has_a_docstring() -> None:
    offenders = [
        f"{name}:{node.lineno} {node.name}"
        for name in _source_files()
        for node in _public_classes(name)
        if not ast.get_docstring(node)
    ]
    assert offenders == [], "public classes without a docstring:\n" + "\n".join(offenders)


def test_main_components_document_their_constructor_parameters() -> None:
    offenders = []
    for name, class_name in MAIN_COMPONENTS:
        found = [node for node in _public_classes(name) if node.name == class_name]
        if not found:
            offenders.append(f"{name}: no class {class_name}")
            continue
        doc = ast.get_docstring(found[0]) or ""
        if "\nArgs:\n" not in doc:
            offenders.append(f"{name} {class_name}: no Args: section")
    assert offenders == [], "\n".join(offenders)
