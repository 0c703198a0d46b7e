"""The live terminal view of ``dapi devnet``: chain position, phase bar, own ML nodes, batches, URLs."""

from __future__ import annotations

from typing import Any

from rich.console import Group
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from dapi.chain.epochs import EpochContext, Phase
from dapi.testbed.session import DevnetSession

PHASE_STYLE = {
    Phase.POC_GENERATE: ("G", "bold red"),
    Phase.POC_GENERATE_WIND_DOWN: ("g", "red"),
    Phase.POC_VALIDATE: ("V", "bold yellow"),
    Phase.POC_VALIDATE_WIND_DOWN: ("v", "yellow"),
    Phase.INFERENCE: ("·", "green"),
}


def phase_bar(ctx: EpochContext, height: int, width: int = 60) -> Text:
    """One character per block from this PoC start to the next; the current block is reversed."""
    start = ctx.start_of_poc
    length = max(1, ctx.next_poc_start - start)
    step = max(1, -(-length // width))
    bar = Text()
    for h in range(start, start + length, step):
        char, style = PHASE_STYLE[ctx.phase_at(h)]
        if h <= height < h + step:
            style += " reverse"
        bar.append(char, style=style)
    return bar


def throughput_line(session: DevnetSession) -> Text:
    """The POC_SLOT policy and the effective epoch's throughput vectors (tokens per block, per model)."""
    ledger = session.devnet.ledger
    parent = ledger.epoch_group(ledger.effective_epoch().index, "")
    line = Text(f"POC_SLOT policy {session.devnet.genesis.poc_slot_policy}")
    if parent is not None and parent.sub_group_models:
        real = parent.real_throughput_vector or (None,) * len(parent.sub_group_models)
        for model, expected, measured in zip(parent.sub_group_models, parent.expected_throughput_vector, real,
                                             strict=False):
            short = measured is not None and measured > expected
            line.append(f"   {model.rsplit('/', 1)[-1]}: serving during PoC {expected}/block, demand "
                        f"{'-' if measured is None else measured}", style="bold red" if short else "")
    return line


def render(session: DevnetSession, outbox_counts: dict[str, int]) -> Group:
    daemon = session.daemon
    snapshot = daemon.view.snapshot
    head = Table.grid(padding=(0, 2))
    if snapshot is None:
        head.add_row("waiting for the first block…")
        ctx = None
    else:
        ctx = snapshot.context
        if ctx.is_genesis or snapshot.height < ctx.start_of_poc:
            ctx = EpochContext(ctx.epoch_index + 1, ctx.next_poc_start, ctx.params) if ctx.is_genesis else ctx
        head.add_row(f"height [bold]{snapshot.height}[/]", f"latest epoch [bold]{snapshot.latest_epoch.index}[/]",
                     f"effective epoch [bold]{session.devnet.ledger.effective_epoch().index}[/]",
                     f"phase [bold]{snapshot.phase}[/]")
    parts: list[Any] = [head, throughput_line(session)]
    if ctx is not None and snapshot is not None:
        parts.append(phase_bar(ctx, snapshot.height))
        parts.append(Text("G generate  g wind-down  V validate  v wind-down  · inference", style="dim"))

    nodes = Table(title="own ML nodes", expand=False)
    for column in ("node", "num", "intended", "current", "PoC", "model", "PRE_POC", "POC_SLOT", "failure"):
        nodes.add_column(column)
    assert daemon.broker is not None
    for item in daemon.broker.nodes():
        st = item.state
        model = next(iter(st.epoch_models), "-")
        info = st.epoch_ml_nodes.get(model) if model != "-" else None
        slots = list(info.timeslot_allocation) if info is not None else []
        pre = "✓" if len(slots) > 0 and slots[0] else "-"
        poc = "[bold cyan]✓ serves[/]" if len(slots) > 1 and slots[1] else "-"
        nodes.add_row(item.node.id, str(item.node.node_num), st.intended_status.name, st.current_status.name,
                      st.poc_current_status.value, model, pre, poc, st.failure_reason[:40])
    parts.append(nodes)

    accepted, refused = daemon.metrics.batches_accepted_count(), daemon.metrics.batches_refused_count()
    parts.append(Text(f"PoC batches accepted {accepted}   refused {refused}   "
                      f"txs landed {outbox_counts.get('landed', 0)}   "
                      f"pending {outbox_counts.get('pending', 0) + outbox_counts.get('sent', 0)}   "
                      f"dead-lettered {outbox_counts.get('dead', 0)}"))
    roles = daemon.inference_stats.summary()
    parts.append(Text("   ".join(
        f"{label}: ok {r['ok']}  failed {sum(r['failed'].values())}  p50 {r['p50_ms'] or '-'} ms"
        for label, r in (("daemon as TA", roles["ta"]), ("as executor", roles["executor"])))))
    if session.load is not None:
        parts.append(_inference_panel(session.load.live()))
    urls = Table.grid(padding=(0, 2))
    urls.add_row("models", f"{session.public_url}/v1/models")
    urls.add_row("pricing", f"{session.public_url}/v1/pricing")
    urls.add_row("epoch", f"{session.public_url}/v1/epochs/latest")
    urls.add_row("status", f"{session.public_url}/v1/status")
    urls.add_row("chat", f"{session.public_url}/v1/chat/completions (signed; the ready line's client)")
    urls.add_row("nodes", f"{session.admin_url}/admin/v1/nodes")
    urls.add_row("dashboard", f"{session.admin_url}/admin/ui")
    urls.add_row("chain RPC", session.devnet.rpc_url)
    parts.append(Panel(urls, title="try", expand=False))
    return Group(*parts)


def _inference_panel(load: dict[str, Any]) -> Panel:
    """The load's requests per phase of the latest epoch: sent, ok (answered and finished on chain), failed."""
    table = Table(expand=False)
    for column in ("phase", "sent", "ok", "failed", "p50 ms", "p99 ms"):
        table.add_column(column)
    for phase, t in load["by_phase"].items():
        style = "red" if t["failed"] else ""
        table.add_row(phase, str(t["sent"]), str(t["ok"]), f"[{style}]{t['failed']}[/]" if style else "0",
                      str(t["p50_ms"] or "-"), str(t["p99_ms"] or "-"))
    title = (f"inference load {load['rps']}/s: sent {load['sent']}  ok {load['ok']}  failed {load['failed']}  "
             f"open {load['open']}")
    return Panel(table, title=title, expand=False)
