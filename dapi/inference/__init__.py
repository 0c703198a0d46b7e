"""The inference path (DESIGN.md §8): Transfer Agent, Executor, validation, and the wire-level pieces they share.

The wire-level modules (`signatures`, `sampling`, `request_body`, `comparison`, `checks`, `responses`,
`stats`, `executor`) import nothing of the daemon's components, so the devnet's simulated peers run the
same code; `transfer_agent`, `directory`, `chain_facts`, `service` and the validation modules are the
daemon's.
"""
