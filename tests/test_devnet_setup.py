"""Devnet genesis (config/devnet.yaml), the daemon config it writes, and `dapi devnet --no-daemon`."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import signal
import socket
import sys
from pathlib import Path

import httpx
import pytest
import yaml

from dapi.chain.epochs import DEVNET_EPOCH_PARAMS
from dapi.chain.keys import SigningKey, address_from_base64_public_key
from dapi.chain.messages import INFERENCE_MSG_TYPE_URLS
from dapi.cli import MISBEHAVIOUR_KINDS, POC_SLOT_POLICIES, build_parser
from dapi.config import load_config, signer_secret
from dapi.devnet import SimulatedNetwork
from dapi.devnet.daemon_config import DaemonPorts, PortLayout, write_daemon_config
from dapi.devnet.genesis import (
    DEFAULT_GENESIS_PATH,
    DEFAULT_SPEC,
    GenesisError,
    ParticipantSpec,
    genesis_from_spec,
    load_genesis,
)
from dapi.devnet.mlnode import SimMLNodeServer
from dapi.devnet.peers import MISBEHAVIOUR_KINDS as PEER_MISBEHAVIOURS
from dapi.devnet.schedule.assignment import PocSlotPolicy
from dapi.devnet.schedule.models import GENESIS_MODELS
from dapi.testbed.command import run_no_daemon

REPO = Path(__file__).resolve().parents[1]


QWQ_ID, QWEN7_ID = "Qwen/QwQ-32B", "Qwen/Qwen2.5-7B-Instruct"


def test_config_devnet_yaml_is_the_built_in_default() -> None:
    assert DEFAULT_GENESIS_PATH == REPO / "config" / "devnet.yaml"
    assert yaml.safe_load(DEFAULT_GENESIS_PATH.read_text()) == DEFAULT_SPEC
    from_file, built_in = load_genesis(DEFAULT_GENESIS_PATH), load_genesis(None)
    # SigningKey compares by identity, so participants are compared through their key bytes.
    assert dataclasses.replace(from_file, participants=()) == dataclasses.replace(built_in, participants=())
    assert [_participant(p) for p in from_file.participants] == [_participant(p) for p in built_in.participants]


def _participant(p: ParticipantSpec) -> tuple[object, ...]:
    return (p.name, p.own, p.account_key.private_key_bytes, p.signer_key.private_key_bytes, p.nodes,
            p.inference_url, p.genesis_weight)


def test_default_genesis_follows_the_design() -> None:
    genesis = load_genesis(None)
    assert genesis.epoch_params == DEVNET_EPOCH_PARAMS
    # The two genesis models of chain-logic.md §14, field for field as the schedule package has them, but
    # for a throughput per nonce that gives a devnet node a few hundred tokens per block (DESIGN.md §6.1).
    assert genesis.models == tuple(
        dataclasses.replace(m, throughput_per_nonce={QWQ_ID: 5, QWEN7_ID: 10}[m.id]) for m in GENESIS_MODELS)
    assert [m.throughput_per_nonce for m in GENESIS_MODELS] == [1000, 10000]  # mainnet's
    assert [p.name for p in genesis.participants] == ["own", "peer1", "peer2"]
    assert genesis.own.own and not any(p.own for p in genesis.peers)
    for p in genesis.participants:
        assert p.account_key.address != p.signer_key.address
        assert [n.local_id for n in p.nodes] == ["node1", "node2", "node3", "node4"]
        granted = {g.msg_type_url for g in genesis.grants if (g.granter, g.grantee) == (p.address, p.signer_address)}
        assert granted == set(INFERENCE_MSG_TYPE_URLS)


def test_keys_are_reproducible_and_distinct() -> None:
    one, two = load_genesis(None), load_genesis(None)
    assert [p.account_key.private_key_bytes for p in one.participants] == [
        p.account_key.private_key_bytes for p in two.participants]
    other_seed = genesis_from_spec({"key_seed": "another"})
    assert other_seed.own.address != one.own.address
    keys = {k.address for p in one.participants for k in (p.account_key, p.signer_key)}
    assert len(keys) == 2 * len(one.participants)


def test_command_line_overrides_and_bad_specs() -> None:
    genesis = load_genesis(None, participants=5, nodes_per_participant=2, block_time=0.1)
    assert len(genesis.participants) == 5 and all(len(p.nodes) == 2 for p in genesis.participants)
    assert genesis.block_time == 0.1
    with pytest.raises(GenesisError, match=r"epoch_params\.poc_stage_duration"):
        genesis_from_spec({"epoch_params": {"poc_stage_duration": 0}})
    with pytest.raises(GenesisError, match="not genesis models: acme/X"):
        genesis_from_spec({"participants": {"node_models": [["acme/X"]]}})
    with pytest.raises(GenesisError, match=r"participants\.count"):
        load_genesis(None, participants=0)
    with pytest.raises(GenesisError, match="poc_slot_policy"):
        genesis_from_spec({"poc_slot_policy": "random"})


def test_unknown_key_is_rejected_by_name(tmp_path: Path) -> None:
    path = tmp_path / "devnet.yaml"
    path.write_text("chain_id: x\nparticipants:\n  count: 2\n  colour: blue\n")
    with pytest.raises(GenesisError) as info:
        load_genesis(path)
    assert str(info.value) == f"devnet genesis {path}: participants.colour: unknown key"
    with pytest.raises(GenesisError, match=r"^devnet genesis: epoch_lenght: unknown key$"):
        genesis_from_spec({"epoch_lenght": 40})


def test_nested_bad_value_names_its_path(tmp_path: Path) -> None:
    path = tmp_path / "devnet.yaml"
    path.write_text("participants:\n  hardware:\n    - {type: H100, count: 8}\n    - {type: A100, count: yes}\n")
    with pytest.raises(GenesisError) as info:
        load_genesis(path)
    message = str(info.value)
    assert message.startswith(f"devnet genesis {path}: participants.hardware.1.count: ")
    assert "\n" not in message
    with pytest.raises(GenesisError, match=r"models\.0\.validation_threshold\.exponent: is required"):
        genesis_from_spec({"models": [{**DEFAULT_SPEC["models"][0], "validation_threshold": {"value": 98}}]})
    with pytest.raises(GenesisError, match=r"rewards\.decay_rate: must be a mapping"):
        genesis_from_spec({"rewards": {"decay_rate": -0.000475}})
    with pytest.raises(GenesisError, match=r"epoch_params\.epoch_length: .*valid integer \(got '40'\)"):
        genesis_from_spec({"epoch_params": {"epoch_length": "40"}})


def test_missing_keys_take_the_defaults() -> None:
    genesis = genesis_from_spec({
        "chain_id": "small",
        "epoch_params": {"epoch_length": 20},
        "participants": {"count": 2, "node_models": [["acme/Tiny"]]},
        "models": [{"id": "acme/Tiny", "units_of_compute_per_token": 1, "v_ram": 1, "throughput_per_nonce": 1}],
        "peers": {"nonces_per_node": 10},
    })
    defaults = load_genesis(None)
    assert genesis.epoch_params == dataclasses.replace(defaults.epoch_params, epoch_length=20)
    assert (genesis.poc_params, genesis.rewards, genesis.bandwidth_limits) == (
        defaults.poc_params, defaults.rewards, defaults.bandwidth_limits)
    assert genesis.peer_behaviour.r_target == defaults.peer_behaviour.r_target
    assert genesis.block_time == 0.5 and genesis.poc_slot_policy == defaults.poc_slot_policy
    (model,) = genesis.models
    assert (model.proposed_by, model.hf_repo, model.model_args, model.validation_threshold) == ("genesis", "", (), None)
    assert [p.name for p in genesis.participants] == ["own", "peer1"]
    assert [n.hardware for n in genesis.own.nodes] == [n.hardware for n in defaults.own.nodes]


def test_written_daemon_config_loads_and_names_the_own_participant(tmp_path: Path) -> None:
    genesis = load_genesis(None)
    files = write_daemon_config(tmp_path / "cfg" / "config.yaml", genesis, chain_rpc="http://127.0.0.1:26657",
                                chain_grpc="127.0.0.1:9090", mlnode_host="127.0.0.1", mlnode_port=8080,
                                ports=DaemonPorts(19000, 19100, 19200))
    assert files.signer_key == files.config.parent / "signer.key"
    assert (files.signer_key.stat().st_mode & 0o777) == 0o600
    raw = yaml.safe_load(files.config.read_text())
    assert raw["chain_node"]["signer_key_file"] == "signer.key"  # relative: moves with the config

    config = load_config(files.config, env={})
    assert config.chain_node.chain_id == genesis.chain_id
    assert config.chain_node.grpc_url == "127.0.0.1:9090"
    assert address_from_base64_public_key(config.chain_node.account_public_key) == genesis.own.address
    secret = signer_secret(config, env={})
    assert secret is not None and SigningKey.parse(secret).address == genesis.own.signer_address
    assert (config.api.public_server_port, config.api.ml_server_port, config.api.admin_server_port) == (
        19000, 19100, 19200)
    assert config.api.poc_callback_url == "http://127.0.0.1:19100"
    assert config.broker.hardware_sync_interval < 60  # devnet epochs are short: declare nodes early
    assert [n.id for n in config.nodes] == [n.local_id for n in genesis.own.nodes]
    first = config.nodes[0]
    assert first.poc_url == first.inference_url == "http://127.0.0.1:8080" + SimMLNodeServer.segment("node1")
    assert list(first.models) == list(genesis.own.nodes[0].models)
    assert first.models["Qwen/Qwen2.5-7B-Instruct"].args == ["--quantization", "fp8"]


def test_port_layout() -> None:
    layout = PortLayout.from_base(20000)
    assert (layout.daemon.public, layout.daemon.ml, layout.daemon.admin) == (20000, 20001, 20002)
    assert (layout.chain_rpc, layout.chain_grpc, layout.mlnodes) == (20003, 20004, 20005)
    defaults = PortLayout.defaults()
    assert (defaults.chain_rpc, defaults.chain_grpc, defaults.daemon.public) == (26657, 9090, 9000)


async def _run_cli(tmp_path: Path, *extra: str) -> asyncio.subprocess.Process:
    code = ("import asyncio, sys; from dapi.cli import build_parser; from dapi.testbed.command import run_no_daemon; "
            "sys.exit(asyncio.run(run_no_daemon(build_parser().parse_args(sys.argv[1:]))))")
    return await asyncio.create_subprocess_exec(
        sys.executable, "-c", code, "devnet", "--no-daemon", "--write-config", str(tmp_path / "config.yaml"),
        "--json", "--base-port", "0", "--block-time", "0.02", *extra,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, cwd=tmp_path,
        env={**os.environ, "DAPI_LOG_LEVEL": "WARNING"},
    )


async def test_no_daemon_cli_runs_epochs_and_prints_ready_then_summary(tmp_path: Path) -> None:
    proc = await _run_cli(tmp_path, "--epochs", "1")
    try:
        async with asyncio.timeout(60):
            stdout, stderr = await proc.communicate()
    finally:
        if proc.returncode is None:
            proc.kill()
    assert proc.returncode == 0, stderr.decode()[-2000:]
    lines = [json.loads(line) for line in stdout.decode().splitlines()]
    ready, summary = lines[0], lines[-1]
    assert ready["event"] == "ready" and summary["event"] == "summary"
    genesis = load_genesis(None)
    assert ready["account_address"] == genesis.own.address
    config = load_config(ready["config"], env={})
    assert config.chain_node.url == ready["chain_rpc"] and config.chain_node.grpc_url == ready["chain_grpc"]
    assert ready["public_api"] == f"http://127.0.0.1:{config.api.public_server_port}"
    assert summary["healthy"] is True and summary["effective_epoch"] >= 1
    assert [e["epoch_index"] for e in lines[1:-1]] == [1]


async def test_no_daemon_cli_stops_cleanly_on_sigterm(tmp_path: Path) -> None:
    proc = await _run_cli(tmp_path)
    try:
        async with asyncio.timeout(60):
            assert proc.stdout is not None
            ready = json.loads(await proc.stdout.readline())
            assert ready["event"] == "ready"
            proc.send_signal(signal.SIGTERM)
            stdout, _ = await proc.communicate()
    finally:
        if proc.returncode is None:
            proc.kill()
    assert proc.returncode == 0
    assert json.loads(stdout.decode().splitlines()[-1])["event"] == "summary"


async def test_a_taken_port_fails_the_start_and_leaves_nothing_running() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        devnet = SimulatedNetwork(block_time=0.02, grpc_port=port)
        with pytest.raises(OSError, match="cannot bind"):
            await devnet.start()
    # The sim ML node server started before the clash was stopped again.
    async with httpx.AsyncClient() as http:
        with pytest.raises(httpx.ConnectError):
            await http.get(devnet.mlnodes.url + "/sim/nodes")
    assert devnet.ledger.height == 0


async def test_no_daemon_cli_takes_a_genesis_file_a_policy_and_a_misbehaving_peer(tmp_path: Path) -> None:
    genesis_file = tmp_path / "genesis.yaml"
    genesis_file.write_text("chain_id: custom-devnet\nparticipants: {count: 3, nodes_per_participant: 2}\n")
    proc = await _run_cli(tmp_path, "--epochs", "1", "--genesis", str(genesis_file), "--poc-slot-policy", "none",
                          "--misbehave", "peer1=skip-seed")
    try:
        async with asyncio.timeout(60):
            stdout, stderr = await proc.communicate()
    finally:
        if proc.returncode is None:
            proc.kill()
    assert proc.returncode == 0, stderr.decode()[-2000:]
    lines = [json.loads(line) for line in stdout.decode().splitlines()]
    ready, epoch = lines[0], lines[1]
    assert load_config(ready["config"], env={}).chain_node.chain_id == "custom-devnet"
    # peer1 skipped its seed, so epoch 1 was formed without it; under "none" every node of the others mines.
    assert [m["name"] for m in epoch["members"]] == ["peer2"]
    nodes = [n for m in epoch["members"] for n in m["nodes"]]
    assert len(nodes) == 2 and not any(n["poc_slot"] for n in nodes)
    assert epoch["poc_slot_policy"] == "none"


@pytest.mark.parametrize(("extra", "message"), [
    (["--misbehave", "peer9=skip-seed"], "no peer 'peer9'"),
    (["--misbehave", "peer1=fly"], "unknown misbehaviour 'fly'"),
    (["--misbehave", "peer1"], "expected PEER=KIND"),
    (["--genesis", "/nonexistent/genesis.yaml"], "devnet genesis /nonexistent/genesis.yaml"),
])
async def test_bad_devnet_options_fail_before_anything_starts(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], extra: list[str], message: str
) -> None:
    args = build_parser().parse_args(["devnet", "--no-daemon", "--write-config", str(tmp_path / "c.yaml"), *extra])
    assert await run_no_daemon(args) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "c.yaml").exists()


def test_the_command_line_knows_every_devnet_misbehaviour_and_policy() -> None:
    assert MISBEHAVIOUR_KINDS == tuple(PEER_MISBEHAVIOURS)
    assert POC_SLOT_POLICIES == tuple(p.value for p in PocSlotPolicy)
