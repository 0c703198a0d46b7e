"""The chain side of the multi-model / GPU-uptime schedule, as pure functions over plain records.

The devnet ledger calls these at its stage heights; the records mirror the chain's protobuf messages
so its wire layer converts them field for field. Modules, bottom up:
`records` (data), `models` (governance registry, hardware diffs), `weights` (per-node PoC weight,
legacy spread, validation majority), `preservation` (weights carried over by serving nodes),
`assignment` (one model per node, POC_SLOT policies), `formation` (active participants, epoch groups,
price), `settlement` (model coverage, rewards).
"""
