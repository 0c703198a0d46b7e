"""POC_SLOT policies compared on the devnet under inference load.

Every run is one `DevnetSession` (the simulated chain, peers and ML nodes plus the real daemon) in a
child process of its own, started from the same genesis (`config/devnet.yaml` with the size, block time
and policy changed), with the same seeded load (`InferenceLoad`, the `dapi devnet --load` traffic)
through the own daemon as Transfer Agent. The load starts once epoch 1 is effective; a run measures
the PoCs of epochs 2 .. epochs + 1 and the Inference phases between them, and stops at the
set-new-validators block of the last one (requests sent after it are not counted; requests sent
before it are waited for until they settle).

Per run, from the load's requests (each tagged with the chain height at which it was sent) and the
chain's epoch reports read after the run (so `demand`'s re-selected flags are the ones in force):

- success: requests answered in full whose MsgFinishInference landed, over requests sent, in
  - `gen`: the PoCGenerate phase;
  - `poc`: the four PoC phases (PoCGenerate .. PoCValidateWindDown);
  - `gap`: from the end of PoC validation to set-new-validators: the phase is Inference again, but
    the executor draw still keeps only POC_SLOT nodes;
  - `inf`: the rest of the Inference phase (the whole network serves);
  - `all`: every request counted.
- p99 (ms) of the successful requests sent in the four PoC phases.
- mined: PoC weight mined as a share of the network's: over the measured PoCs, the Σ poc_weight (in
  the epoch that PoC formed) of nodes that mined in it, ÷ the Σ poc_weight of all nodes of that
  epoch. A node that kept serving (POC_SLOT in the effective epoch) did not mine: its weight is the
  preserved copy of its last one (plan 6.3), so the share is mined ÷ (mined + what the serving nodes
  would have mined, estimated by their preserved weight). `none` is 1 by construction.
- dark: the share of measured PoCs in which some model of the effective epoch had no POC_SLOT node
  anywhere (the allocations in force during that PoC).

`python -m benchmarks.schedule_policies [--quick] [--epochs K] [--block-time S] [--seed S]
[--plot PATH] [--json]` runs the grid (policies x sizes x loads) and prints one table;
`--calibrate` instead runs policy `none` at rising rates and prints the success rate in the
Inference phase, to choose the load levels. The plot needs matplotlib (`pip install -e '.[plot]'`);
without it the script says so and skips the plot. docs/schedule-policies.md has a run.
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import importlib
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from typing import Any

__all__ = ["RunResult", "main", "run_one"]

POLICIES = ("none", "half-nodes", "weight", "demand")
SIZES = (3, 10)
NODES_PER_PARTICIPANT = 4
# Requests per second, chosen from `--calibrate` (docs/schedule-policies.md): under `none`, both sizes serve
# ~100% of 4-10 rps in the Inference phase and degrade from ~16 rps on, where this machine's CPU, not the
# nodes' token capacity, is the limit (the devnet, its peers and the daemon share one Python process).
# Light is a fraction of the comfortable level; heavy is above it, near what the process serves at all.
LOADS: dict[int, dict[str, float]] = {3: {"light": 4.0, "heavy": 12.0}, 10: {"light": 4.0, "heavy": 12.0}}
# Multiplies the genesis models' throughput_per_nonce (the nodes' serving capacity); 1 = config/devnet.yaml.
CAPACITY_SCALE = 1.0
CATEGORIES = ("gen", "poc", "gap", "inf", "all")
POC_PHASES = ("PoCGenerate", "PoCGenerateWindDown", "PoCValidate", "PoCValidateWindDown")


@dataclass
class _Count:
    sent: int = 0
    ok: int = 0
    latencies: list[float] = field(default_factory=list)
    reasons: dict[str, int] = field(default_factory=dict)

    def add(self, ok: bool, latency: float, reason: str) -> None:
        self.sent += 1
        if ok:
            self.ok += 1
            self.latencies.append(latency)
        else:
            self.reasons[reason] = self.reasons.get(reason, 0) + 1

    def as_json(self) -> dict[str, Any]:
        lat = sorted(self.latencies)
        p99 = lat[min(len(lat) - 1, int(0.99 * len(lat)))] * 1000 if lat else None
        return {"sent": self.sent, "ok": self.ok, "success": self.ok / self.sent if self.sent else None,
                "p99_ms": None if p99 is None else round(p99, 1), "failures": dict(sorted(self.reasons.items()))}


@dataclass
class RunResult:
    """One run's figures (see the module docstring)."""

    policy: str
    participants: int
    load: str
    rps: float
    requests: dict[str, dict[str, Any]]
    mined_weight: int
    all_weight: int
    pocs: int
    dark_pocs: int
    per_poc: list[dict[str, Any]]
    seconds: float
    healthy: bool = True

    @property
    def mined_share(self) -> float:
        return self.mined_weight / self.all_weight if self.all_weight else 0.0

    def as_json(self) -> dict[str, Any]:
        return {"policy": self.policy, "participants": self.participants, "load": self.load, "rps": self.rps,
                "requests": self.requests, "mined_weight": self.mined_weight, "all_weight": self.all_weight,
                "mined_share": round(self.mined_share, 4), "pocs": self.pocs, "dark_pocs": self.dark_pocs,
                "per_poc": self.per_poc, "seconds": round(self.seconds, 1), "healthy": self.healthy}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> RunResult:
        return cls(policy=data["policy"], participants=data["participants"], load=data["load"], rps=data["rps"],
                   requests=data["requests"], mined_weight=data["mined_weight"], all_weight=data["all_weight"],
                   pocs=data["pocs"], dark_pocs=data["dark_pocs"], per_poc=data["per_poc"],
                   seconds=data["seconds"], healthy=data.get("healthy", True))


# -- one run (in a child process) --


async def run_one(policy: str, participants: int, rps: float, *, epochs: int, block_time: float, seed: int,
                  capacity_scale: float = 1.0, load_name: str = "") -> RunResult:
    """Run the devnet with `policy` and the seeded load; measure the PoCs of epochs 2 .. epochs + 1."""
    import yaml

    from dapi.chain.epochs import EpochContext
    from dapi.devnet.genesis import DEFAULT_GENESIS_PATH, load_genesis
    from dapi.testbed.session import DevnetSession

    started = time.monotonic()
    spec = yaml.safe_load(DEFAULT_GENESIS_PATH.read_text())
    models = [{**m, "throughput_per_nonce": max(1, round(m["throughput_per_nonce"] * capacity_scale))}
              for m in spec["models"]]
    genesis = load_genesis(DEFAULT_GENESIS_PATH, participants=participants,
                           nodes_per_participant=NODES_PER_PARTICIPANT, block_time=block_time,
                           overrides={"poc_slot_policy": policy, "models": models})
    last = epochs + 1
    async with DevnetSession(genesis=genesis, block_time=None) as session:
        devnet = session.devnet
        ledger = devnet.ledger
        load = session.start_load(rps, seed)
        # The height at every call of the load's `where` (at each arrival, just before the request's
        # `sent_at`, and at each answer), so every request can be placed at the height it was sent.
        samples_t: list[float] = []
        samples_h: list[int] = []
        where = load.where

        def where_sampled() -> tuple[int, str]:
            height, phase = where()
            samples_t.append(time.monotonic())
            samples_h.append(height)
            return height, phase

        load.where = where_sampled
        await devnet.wait_until(lambda: ledger.effective_epoch().index >= last, timeout=None,
                                what=f"epoch {last} effective")
        cutoff_t = time.monotonic()
        # Wait for what was sent before the cut-off to settle (the load fails a Finish after settle_blocks).
        deadline = time.monotonic() + 60 * block_time * 2
        while time.monotonic() < deadline:
            load.settle()
            if all(r.settled for r in load.results if r.sent_at < cutoff_t):
                break
            await asyncio.sleep(block_time)

        contexts = {i: EpochContext.for_epoch(e, ledger.params)
                    for i in range(1, last + 1) if (e := ledger.epoch(i)) is not None}
        counts = {c: _Count() for c in CATEGORIES}
        for result in load.results:
            if result.sent_at >= cutoff_t or not result.settled:
                continue
            i = bisect.bisect_right(samples_t, result.sent_at) - 1
            height = samples_h[i] if i >= 0 else 0
            epoch = ledger.latest_epoch(height).index
            ctx = contexts.get(epoch)
            in_gap = (ctx is not None and result.phase == "Inference"
                      and ctx.end_of_poc_validation <= height <= ctx.set_new_validators)
            cats = ["all"]
            if result.phase in POC_PHASES:
                cats.append("poc")
            if result.phase == "PoCGenerate":
                cats.append("gen")
            if result.phase == "Inference":
                cats.append("gap" if in_gap else "inf")
            for c in cats:
                counts[c].add(result.ok, result.latency, result.reason)

        mined = total = dark = 0
        per_poc: list[dict[str, Any]] = []
        for index in range(2, last + 1):
            serving_epoch, formed = devnet.report(index - 1), devnet.report(index)
            if serving_epoch is None or formed is None:
                continue
            slot = {(m.address, n.node_id): n.poc_slot for m in serving_epoch.members for n in m.nodes}
            poc_mined = sum(n.poc_weight for m in formed.members for n in m.nodes
                            if not slot.get((m.address, n.node_id), False))
            poc_all = sum(n.poc_weight for m in formed.members for n in m.nodes)
            serving = {model: sum(n.throughput for m in serving_epoch.members for n in m.nodes
                                  if n.poc_slot and n.model_id == model)
                       for model in serving_epoch.sub_group_models}
            dark_models = [model for model, capacity in serving.items() if capacity == 0]
            mined += poc_mined
            total += poc_all
            dark += bool(dark_models)
            per_poc.append({"poc_of_epoch": index, "mined": poc_mined, "all": poc_all,
                            "serving_capacity": serving, "demand": list(serving_epoch.real_throughput_vector),
                            "dark": dark_models})
    return RunResult(policy=policy, participants=participants, load=load_name, rps=rps,
                     requests={c: counts[c].as_json() for c in CATEGORIES}, mined_weight=mined, all_weight=total,
                     pocs=len(per_poc), dark_pocs=dark, per_poc=per_poc, seconds=time.monotonic() - started)


def _child(args: argparse.Namespace) -> int:
    from dapi.logs import configure_logging

    configure_logging({"DAPI_LOG_LEVEL": "ERROR", "DAPI_LOG_FORMAT": "json"})
    result = asyncio.run(run_one(args.policy, args.participants, args.rps, epochs=args.epochs,
                                 block_time=args.block_time, seed=args.seed, capacity_scale=args.capacity_scale,
                                 load_name=args.load_name))
    print(json.dumps(result.as_json()), flush=True)
    return 0


def _spawn(policy: str, participants: int, rps: float, load_name: str, args: argparse.Namespace) -> RunResult:
    command = [sys.executable, "-m", "benchmarks.schedule_policies", "--one", "--policy", policy,
               "--participants", str(participants), "--rps", str(rps), "--load-name", load_name,
               "--epochs", str(args.epochs), "--block-time", str(args.block_time), "--seed", str(args.seed),
               "--capacity-scale", str(args.capacity_scale)]
    started = time.monotonic()
    done = subprocess.run(command, capture_output=True, text=True, check=False,
                          timeout=600 + 200 * args.epochs)
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode != 0 or not lines:
        sys.stderr.write(done.stderr[-3000:])
        return RunResult(policy=policy, participants=participants, load=load_name, rps=rps, requests={},
                         mined_weight=0, all_weight=0, pocs=0, dark_pocs=0, per_poc=[],
                         seconds=time.monotonic() - started, healthy=False)
    return RunResult.from_json(json.loads(lines[-1]))


# -- the grid, the table and the plot --


def _pct(figures: dict[str, Any] | None) -> str:
    if not figures or figures.get("success") is None:
        return "-"
    return f"{100 * figures['success']:.1f}% ({figures['sent']})"


def table(results: list[RunResult]) -> str:
    lines = ["| participants | load (rps) | policy | success PoCGenerate | success PoC phases | success gap "
             "| success Inference | success overall | p99 PoC (ms) | PoC weight mined | epochs with a dark model |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        if not r.healthy:
            lines.append(f"| {r.participants} | {r.load} ({r.rps:g}) | {r.policy} | run failed |||||||")
            continue
        q = r.requests
        p99 = q["poc"]["p99_ms"]
        lines.append(
            f"| {r.participants} | {r.load} ({r.rps:g}) | {r.policy} | {_pct(q['gen'])} | {_pct(q['poc'])} "
            f"| {_pct(q['gap'])} | {_pct(q['inf'])} | {_pct(q['all'])} | {'-' if p99 is None else f'{p99:.0f}'} "
            f"| {r.mined_share:.3f} | {r.dark_pocs}/{r.pocs} |")
    return "\n".join(lines)


def plot(results: list[RunResult], path: str) -> None:
    try:
        matplotlib: Any = importlib.import_module("matplotlib")
        matplotlib.use("Agg")
        plt: Any = importlib.import_module("matplotlib.pyplot")
    except ImportError:
        print(f"no plot ({path}): matplotlib is not installed (pip install -e '.[plot]')", flush=True)
        return
    sizes = sorted({r.participants for r in results})
    figure, axes = plt.subplots(1, len(sizes), figsize=(5.5 * len(sizes), 4.5), sharey=True, squeeze=False)
    markers = {"none": "x", "half-nodes": "s", "weight": "o", "demand": "^"}
    for ax, size in zip(axes[0], sizes, strict=True):
        for r in results:
            if r.participants != size or not r.healthy or r.requests["poc"]["success"] is None:
                continue
            ax.scatter(r.mined_share, 100 * r.requests["poc"]["success"], marker=markers.get(r.policy, "o"),
                       s=60 if r.load == "heavy" else 30, label=f"{r.policy} {r.load}")
        ax.set_title(f"{size} participants")
        ax.set_xlabel("PoC weight mined (share of the network's)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    axes[0][0].set_ylabel("inference success during PoC phases (%)")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    print(f"plot written to {path}", flush=True)


def main(argv: list[str] | None = None) -> list[RunResult]:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.schedule_policies")
    parser.add_argument("--quick", action="store_true", help="3 participants, light load, 2 epochs")
    parser.add_argument("--epochs", type=int, default=None, help="PoCs measured per run (default 6; quick 2)")
    parser.add_argument("--block-time", type=float, default=0.15)
    parser.add_argument("--seed", type=int, default=1, help="the load seed")
    parser.add_argument("--capacity-scale", type=float, default=CAPACITY_SCALE,
                        help="multiply every model's throughput_per_nonce (the nodes' serving capacity)")
    parser.add_argument("--plot", default=None, help="write availability vs weight mined to this PNG")
    parser.add_argument("--json", action="store_true", help="also print every run's figures as JSON")
    parser.add_argument("--calibrate", default=None, metavar="RPS,RPS,...",
                        help="run policy none at these rates for both sizes and print the success per phase")
    parser.add_argument("--one", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--policy", default="weight", help=argparse.SUPPRESS)
    parser.add_argument("--participants", type=int, default=3, help=argparse.SUPPRESS)
    parser.add_argument("--rps", type=float, default=4.0, help=argparse.SUPPRESS)
    parser.add_argument("--load-name", default="", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.epochs is None:
        args.epochs = 2 if args.quick else 6
    if args.one:
        sys.exit(_child(args))

    print(f"python {sys.version.split()[0]}, {os.cpu_count()} cores; block time {args.block_time} s, "
          f"{args.epochs} PoCs measured per run, load seed {args.seed}, capacity scale {args.capacity_scale}",
          flush=True)
    started = time.monotonic()
    results: list[RunResult] = []
    if args.calibrate:
        for size in SIZES:
            for rate in (float(x) for x in args.calibrate.split(",")):
                r = _spawn("none", size, rate, "calibrate", args)
                results.append(r)
                inf = r.requests.get("inf") if r.healthy else None
                print(f"{size:>3} participants {rate:>6g} rps: Inference {_pct(inf)}, p99 "
                      f"{inf['p99_ms'] if inf else '-'} ms; failures {inf['failures'] if inf else '-'}; "
                      f"{r.seconds:.0f} s", flush=True)
        return results
    sizes = (3,) if args.quick else SIZES
    loads = ("light",) if args.quick else ("light", "heavy")
    for size in sizes:
        for load_name in loads:
            rate = LOADS[size][load_name]
            for policy in POLICIES:
                r = _spawn(policy, size, rate, load_name, args)
                results.append(r)
                print(f"{size:>3} participants {load_name:<5} ({rate:g} rps) {policy:<10} "
                      f"{'ok' if r.healthy else 'FAILED'} in {r.seconds:.0f} s", flush=True)
    print(table(results), flush=True)
    print(f"total {time.monotonic() - started:.0f} s", flush=True)
    if args.json:
        print(json.dumps([r.as_json() for r in results], indent=1))
    if args.plot:
        plot(results, args.plot)
    return results


if __name__ == "__main__":
    main()
