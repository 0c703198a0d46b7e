"""Command line: ``dapi run | devnet | version`` (DESIGN.md §4.1)."""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Sequence

from dapi import __version__


def _port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a port number: {text!r}") from None
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"port out of range 0..65535: {value}")
    return value


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1: {value}")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be greater than 0: {value}")
    return value


# Kept here (not imported from the devnet) so that `dapi run` never loads the simulator.
POC_SLOT_POLICIES = ("weight", "half-nodes", "demand", "none")
MISBEHAVIOUR_KINDS = ("mine-with-poc-slot", "skip-seed", "forge-batches", "wrong-inference-output")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dapi", description="gonka API node")
    sub = parser.add_subparsers(dest="command", required=True, metavar="{run,devnet,version}")

    run = sub.add_parser("run", help="run the daemon against a chain node and ML nodes")
    run.add_argument("--config", required=True, metavar="PATH", help="YAML config file")

    devnet = sub.add_parser("devnet", help="simulated chain, peers and ML nodes, plus the real daemon, on loopback")
    devnet.add_argument("--genesis", default=None, metavar="PATH",
                        help="devnet genesis file in config/devnet.yaml's format (default: that file)")
    devnet.add_argument("--participants", type=_positive_int, default=None, metavar="N",
                        help="participants in all, the own one included (default: the genesis', 3)")
    devnet.add_argument("--nodes-per-participant", type=_positive_int, default=None, metavar="M",
                        help="ML nodes of each participant (default: the genesis', 4)")
    devnet.add_argument("--block-time", type=_positive_float, default=None, metavar="SECONDS",
                        help="seconds between blocks (default: the genesis', 0.5)")
    devnet.add_argument("--poc-slot-policy", choices=POC_SLOT_POLICIES, default=None,
                        help="how the chain picks the nodes that keep serving during PoC (default: the genesis', "
                             "weight)")
    devnet.add_argument("--misbehave", action="append", default=[], metavar="PEER=KIND[,KIND...]",
                        help=f"make a simulated peer break a rule; kinds: {', '.join(MISBEHAVIOUR_KINDS)} "
                             "(repeatable)")
    devnet.add_argument("--load", type=_positive_float, default=None, metavar="RPS",
                        help="send seeded chat completions through the own daemon as Transfer Agent, RPS per second "
                             "on average (Poisson arrivals), from the first effective epoch on")
    devnet.add_argument("--load-seed", type=int, default=0, metavar="S",
                        help="seed of the load's arrivals, models, prompts and lengths (default 0)")
    devnet.add_argument("--epochs", type=_positive_int, default=None, metavar="K",
                        help="stop after K full epochs and print a summary")
    devnet.add_argument("--base-port", type=_port, default=None, metavar="P",
                        help="lay every port out from P instead of the default ports (0: let the OS choose)")
    devnet.add_argument("--json", action="store_true", help="one JSON object per line on stdout")
    devnet.add_argument("--no-daemon", action="store_true",
                        help="run everything but the daemon (start it yourself with dapi run)")
    devnet.add_argument("--write-config", metavar="PATH", default=None,
                        help="write a daemon config for this devnet to PATH (with --no-daemon)")

    sub.add_parser("version", help="print the version")
    return parser


def _run(config_path: str) -> int:
    from dapi.config import ConfigError, load_config
    from dapi.daemon import run
    from dapi.logs import configure_logging

    configure_logging()
    try:
        config = load_config(config_path)
        return asyncio.run(run(config))
    except ConfigError as exc:
        print(f"dapi run: config error: {exc}", file=sys.stderr)
        return 2


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "version":
        print(f"dapi {__version__}")
        return 0
    if args.command == "run":
        return _run(args.config)
    if args.command == "devnet":
        if args.write_config and not args.no_daemon:
            print("dapi devnet: --write-config needs --no-daemon", file=sys.stderr)
            return 2
        if args.load is not None and args.no_daemon:
            print("dapi devnet: --load sends through the own daemon, which --no-daemon does not start",
                  file=sys.stderr)
            return 2
        from dapi.testbed.command import run_no_daemon, run_with_daemon

        return asyncio.run(run_no_daemon(args) if args.no_daemon else run_with_daemon(args))
    return 2
