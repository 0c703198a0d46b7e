"""The command line contract of DESIGN.md §4.1."""

from __future__ import annotations

import subprocess
import sys

import pytest

from dapi import __version__
from dapi.cli import build_parser, main
from dapi.testbed.command import devnet_setup


def test_version_prints_the_package_version(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["version"]) == 0
    assert capsys.readouterr().out.strip() == f"dapi {__version__}"


def test_python_dash_m_runs_the_same_cli() -> None:
    out = subprocess.run([sys.executable, "-m", "dapi", "version"], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == f"dapi {__version__}"


def test_devnet_flags_and_defaults() -> None:
    args = build_parser().parse_args(["devnet"])
    # DESIGN.md §4.1 defaults, which come from the genesis unless a flag overrides them.
    assert (args.participants, args.nodes_per_participant, args.block_time) == (None, None, None)
    genesis, misbehaviour = devnet_setup(args)
    assert (len(genesis.participants), len(genesis.own.nodes), genesis.block_time) == (3, 4, 0.5)
    assert str(genesis.poc_slot_policy) == "weight" and misbehaviour == {}
    assert args.epochs is None and not args.json and not args.no_daemon
    args = build_parser().parse_args(
        [
            "devnet",
            "--participants",
            "5",
            "--nodes-per-participant",
            "2",
            "--block-time",
            "0.05",
            "--epochs",
            "3",
            "--base-port",
            "20000",
            "--json",
            "--no-daemon",
            "--write-config",
            "x.yaml",
        ]
    )
    assert (args.participants, args.nodes_per_participant, args.block_time, args.epochs) == (5, 2, 0.05, 3)
    assert (args.base_port, args.json, args.no_daemon, args.write_config) == (20000, True, True, "x.yaml")


@pytest.mark.parametrize(
    "argv",
    [["devnet", "--participants", "0"], ["devnet", "--block-time", "-1"], ["devnet", "--base-port", "99999"], ["run"]],
)
def test_bad_arguments_exit_2_with_a_message(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2
    assert "error:" in capsys.readouterr().err
