"""`dapi devnet`: the devnet with the real daemon (live view or JSON lines), or without it (DESIGN.md §4.1).

With the daemon, `DevnetSession` runs everything in this process and `HealthWatch` judges it. Without
it (`--no-daemon --write-config PATH`), runs the simulated chain, its peers and the own participant's
simulated ML nodes, writes a complete daemon config (with `signer.key` beside it) for a separately
started `dapi run --config PATH`, prints the ready line, and runs until SIGINT/SIGTERM (exit 0), or
with `--epochs K` until epoch K is effective (exit 0 if every epoch formed with members and no peer tx
failed, else 1).

Ports: the defaults of DESIGN.md §4.1 (chain RPC 26657, gRPC 9090, sim ML nodes 8080; the daemon's
9000/9100/9200 go into the config), `--base-port P` lays them out from P (see PortLayout.from_base),
and `--base-port 0` lets the OS choose every port (the daemon's are probed free ones).

`dapi.cli` calls `run_no_daemon` for `dapi devnet --no-daemon` and `run_with_daemon` otherwise.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import sys
import tempfile
from pathlib import Path
from typing import Any

import structlog

from dapi.devnet.daemon_config import DaemonPorts, PortLayout
from dapi.devnet.genesis import DEFAULT_GENESIS_PATH, DevnetGenesis, GenesisError, load_genesis
from dapi.devnet.network import SimulatedNetwork
from dapi.devnet.peers import Misbehaviour, parse_misbehave
from dapi.logs import configure_logging
from dapi.runtime.signals import install_stop_signals
from dapi.runtime.tasks import TaskOwner

__all__ = ["run_no_daemon", "run_with_daemon"]


def _free_port(host: str = "127.0.0.1") -> int:
    # Probed, then released: another process could take it before the daemon binds, which is the
    # price of letting the OS choose ports for a process that is not started yet.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((host, 0))
        return int(probe.getsockname()[1])


def _layout(base_port: int | None) -> PortLayout:
    if base_port is None:
        return PortLayout.defaults()
    if base_port == 0:
        return PortLayout(DaemonPorts(_free_port(), _free_port(), _free_port()), chain_rpc=0, chain_grpc=0, mlnodes=0)
    return PortLayout.from_base(base_port)


class _Output:
    def __init__(self, json_mode: bool) -> None:
        self.json_mode = json_mode

    def event(self, payload: dict[str, Any], text: str) -> None:
        print(json.dumps(payload) if self.json_mode else text, flush=True)


def devnet_setup(args: argparse.Namespace) -> tuple[DevnetGenesis, dict[str, Misbehaviour]]:
    """The genesis and the misbehaving peers the command line asks for; ValueError/GenesisError say why not."""
    path = getattr(args, "genesis", None)
    if path is None and DEFAULT_GENESIS_PATH.exists():
        path = DEFAULT_GENESIS_PATH
    policy = getattr(args, "poc_slot_policy", None)
    genesis = load_genesis(
        path,
        participants=getattr(args, "participants", None),
        nodes_per_participant=getattr(args, "nodes_per_participant", None),
        block_time=getattr(args, "block_time", None),
        overrides={"poc_slot_policy": policy} if policy else None,
    )
    if len(genesis.participants) < 2:
        raise ValueError("--participants must count the own participant and at least one peer")
    peer_names = [p.name for p in genesis.peers]
    misbehaviour: dict[str, Misbehaviour] = {}
    for spec in getattr(args, "misbehave", None) or ():
        peer, behaviour = parse_misbehave(spec, peer_names)
        misbehaviour[peer] = behaviour
    return genesis, misbehaviour


async def run_no_daemon(args: argparse.Namespace) -> int:
    """The `dapi devnet --no-daemon --write-config PATH` command; returns the exit code."""
    if not getattr(args, "write_config", None):
        print("dapi devnet --no-daemon: --write-config PATH is required", file=sys.stderr)
        return 2
    if not structlog.is_configured():
        configure_logging()  # logs go to stderr; stdout carries only the ready/epoch/summary lines
    out = _Output(bool(getattr(args, "json", False)))
    try:
        genesis, misbehaviour = devnet_setup(args)
        layout = _layout(getattr(args, "base_port", None))
    except (GenesisError, ValueError) as exc:
        print(f"dapi devnet: {exc}", file=sys.stderr)
        return 2

    devnet = SimulatedNetwork(genesis, rpc_port=layout.chain_rpc, grpc_port=layout.chain_grpc,
                              mlnode_port=layout.mlnodes)
    for peer, behaviour in misbehaviour.items():
        devnet.peers.set_misbehaviour(peer, behaviour)
    stop = asyncio.Event()
    remove_signals = install_stop_signals(stop)
    try:
        try:
            await devnet.start()
        except OSError as exc:
            print(f"dapi devnet: cannot start the devnet: {exc}", file=sys.stderr)
            return 1
        try:
            try:
                files = devnet.write_daemon_config(args.write_config, ports=layout.daemon)
            except OSError as exc:
                print(f"dapi devnet: cannot write {args.write_config}: {exc}", file=sys.stderr)
                return 1
            ready = {**devnet.ready_info(layout.daemon), "config": str(files.config)}
            out.event(ready, (
                f"devnet {genesis.chain_id} ready: chain RPC {ready['chain_rpc']}, gRPC {ready['chain_grpc']}, "
                f"sim ML nodes {ready['mlnodes']}\n"
                f"daemon config written to {files.config}; start it with: dapi run --config {files.config}\n"
                f"own participant {ready['account_address']} (signer {ready['signer_address']})"
            ))
            healthy, reason = await _watch(devnet, out, stop, epochs=getattr(args, "epochs", None))
            summary = _summary(devnet, healthy, reason)
            out.event(summary, f"devnet stopped at height {summary['height']}: "
                               f"{'healthy' if healthy else 'NOT healthy'}{f' ({reason})' if reason else ''}")
        finally:
            await devnet.stop()
    finally:
        remove_signals()
    return 0 if healthy else 1


async def run_with_daemon(args: argparse.Namespace) -> int:
    """`dapi devnet`: chain, peers, simulated ML nodes and the real daemon, with a live view or JSON lines."""
    from dapi.testbed.health import HealthWatch
    from dapi.testbed.session import DevnetSession

    json_mode = bool(getattr(args, "json", False))
    live = not json_mode and sys.stdout.isatty()
    work_dir = Path(tempfile.mkdtemp(prefix="dapi-devnet-"))
    if not structlog.is_configured():
        if live:
            # The live view owns the terminal; the log goes to a file in the work folder.
            log_file = await asyncio.to_thread((work_dir / "dapi.log").open, "a")
            configure_logging({"DAPI_LOG_LEVEL": "INFO"}, stream=log_file)
        else:
            configure_logging({"DAPI_LOG_LEVEL": os.environ.get("DAPI_LOG_LEVEL", "WARNING"),
                               "DAPI_LOG_FORMAT": os.environ.get("DAPI_LOG_FORMAT", "json")})
    out = _Output(json_mode)
    try:
        genesis, misbehaviour = devnet_setup(args)
        layout = _layout(getattr(args, "base_port", None))
    except (GenesisError, ValueError) as exc:
        print(f"dapi devnet: {exc}", file=sys.stderr)
        return 2
    stop = asyncio.Event()
    remove_signals = install_stop_signals(stop)
    tasks = TaskOwner("devnet-command")
    try:
        session = DevnetSession(
            genesis=genesis, misbehaviour=misbehaviour, block_time=None, ports=layout.daemon,
            devnet_ports=(layout.chain_rpc, layout.chain_grpc, layout.mlnodes), work_dir=work_dir,
        )
        try:
            await session.__aenter__()
        except OSError as exc:
            print(f"dapi devnet: cannot start: {exc}", file=sys.stderr)
            return 1
        try:
            ready = {**session.ready_info(), "work_dir": str(work_dir)}
            out.event(ready, f"devnet ready: public API {ready['public_api']}, admin {ready['admin_api']}, "
                             f"chain RPC {ready['chain_rpc']} (work folder {work_dir})")
            rps = getattr(args, "load", None)
            load = session.start_load(rps, getattr(args, "load_seed", 0)) if rps else None

            def on_epoch(event: dict[str, Any]) -> None:
                if load is not None:
                    event["inference"] = load.take_window()
                if not live:
                    ok = all(c["ok"] for c in event["poc"]) and event["models_ok"]
                    out.event(event, f"epoch {event['epoch_index']} effective: "
                                     f"{'every own node followed its allocation' if ok else 'PROBLEMS'}")

            watch = HealthWatch(session, on_epoch=on_epoch)
            epochs = getattr(args, "epochs", None)
            watching = tasks.spawn(watch.run(epochs), "devnet-health-watch")
            waiting = tasks.spawn(stop.wait(), "devnet-stop-signal")
            if live:
                await _live(session, watching, waiting)
            else:
                await asyncio.wait({watching, waiting}, return_when=asyncio.FIRST_COMPLETED)
            await tasks.stop()
            crashed = None
            if watching.done() and not watching.cancelled() and watching.exception() is not None:
                crashed = repr(watching.exception())
            verdict = await watch.verdict()
            if crashed:
                verdict["healthy"] = False
                verdict["problems"].append(f"the health watch failed: {crashed}")
            if epochs is not None and len(watch.formed) < epochs:
                verdict["healthy"] = False
                verdict["problems"].append(f"stopped after {len(watch.formed)} of {epochs} epochs")
            summary = {"event": "summary", **verdict, "height": session.devnet.ledger.height}
            if load is not None:
                summary["inference"] = load.totals()
            summary["invalidated"] = watch.invalidated()
            summary["throughput"] = [
                {"epoch": r.epoch_index, "poc_slot_policy": r.poc_slot_policy,
                 "expected_throughput_vector": list(r.expected_throughput_vector),
                 "real_throughput_vector": list(r.real_throughput_vector),
                 "throughput_shortfalls": [x.as_json() for x in r.throughput_shortfalls]}
                for r in session.devnet.reports()]
            verdict_text = "healthy" if verdict["healthy"] else "NOT healthy: " + "; ".join(verdict["problems"])
            out.event(summary, f"devnet stopped at height {summary['height']}: {verdict_text}")
            return 0 if verdict["healthy"] else 1
        finally:
            await tasks.stop()
            await session.__aexit__(None, None, None)
    finally:
        remove_signals()


async def _live(session: Any, *tasks: asyncio.Task[Any]) -> None:
    from rich.live import Live

    from dapi.testbed.live import render

    assert session.daemon.outbox is not None
    with Live(refresh_per_second=4, screen=False) as view:
        while not any(t.done() for t in tasks):
            counts = await session.daemon.outbox.counts()
            view.update(render(session, counts))
            await asyncio.wait(set(tasks), timeout=0.25, return_when=asyncio.FIRST_COMPLETED)


async def _watch(
    devnet: SimulatedNetwork, out: _Output, stop: asyncio.Event, *, epochs: int | None
) -> tuple[bool, str]:
    """Report each epoch as it becomes effective; return (healthy, reason) when told to stop."""
    announced = 0
    patience = max(20 * devnet.block_time, 2.0)
    while not stop.is_set():
        try:
            await devnet.wait_until(
                lambda seen=announced: stop.is_set() or devnet.ledger.effective_epoch().index > seen,  # type: ignore[misc]
                timeout=patience, what="the next epoch or a stop signal",
            )
        except TimeoutError:
            continue
        except RuntimeError as exc:
            return False, str(exc)
        while devnet.ledger.effective_epoch().index > announced:
            announced += 1
            report = devnet.report(announced)
            payload: dict[str, Any] = {"event": "epoch", **(report.as_json() if report else {"epoch_index": announced}),
                                       "poc_slot_policy": str(devnet.genesis.poc_slot_policy)}
            members = ", ".join(f"{m.name}={m.weight}" for m in report.members) if report else "-"
            out.event(payload, f"epoch {announced} effective: members {members or '(none)'}")
            if report is None or not report.members:
                return False, f"epoch {announced} formed without members"
        if epochs is not None and announced >= epochs:
            break
    if devnet.peers.rejected() or devnet.peers.failed():
        return False, "a simulated peer's tx was rejected or failed"
    return True, ""


def _summary(devnet: SimulatedNetwork, healthy: bool, reason: str) -> dict[str, Any]:
    return {
        "event": "summary",
        "healthy": healthy,
        "reason": reason,
        "height": devnet.ledger.height,
        "effective_epoch": devnet.ledger.effective_epoch().index,
        "epochs": [r.as_json() for r in devnet.reports()],
        "peer_txs": len(devnet.peers.txs),
        "peer_txs_rejected": len(devnet.peers.rejected()),
        "peer_txs_failed": len(devnet.peers.failed()),
        "claims": len(devnet.ledger.claims()),
    }
