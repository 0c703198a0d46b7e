"""Proof-of-Compute duties of the API node: seeds, reward claims, validation of other participants' batches."""
