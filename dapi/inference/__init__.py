"""The inference path (DESIGN.md §8): what the API node and the chain agree on about one inference request.

Pure, wire-level pieces live here so that the daemon and the devnet chain share one implementation:
`signatures` (the signed bytes of the developer, transfer agent and executor signatures, both client
schemes) and `sampling` (which inferences a validator must validate).
"""
