"""Following the chain: websocket subscription, in-order block processing with catch-up, phase dispatcher."""
