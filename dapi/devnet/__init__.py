"""The devnet: a simulated chain, simulated peers and simulated ML nodes on loopback.

`from dapi.devnet import SimulatedNetwork` (see dapi.devnet.network). The export is lazy so that importing the
pure schedule logic (`dapi.devnet.schedule`) does not pull in the servers.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from dapi.devnet.network import SimulatedNetwork

__all__ = ["SimulatedNetwork"]


def __getattr__(name: str) -> Any:
    if name == "SimulatedNetwork":
        from dapi.devnet.network import SimulatedNetwork

        return SimulatedNetwork
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
