"""The devnet: a simulated chain, simulated peers and simulated ML nodes on loopback."""
