"""Everything that talks to a chain node: epoch math, queries, RPC, keys, transactions, outbox."""
