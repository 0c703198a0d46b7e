"""The devnet chain's wire servers: gRPC (queries, tx service) and CometBFT RPC (HTTP JSON-RPC + websocket)."""
