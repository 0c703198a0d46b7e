"""The devnet: a simulated chain, simulated peers and simulated ML nodes on loopback.

`from dapi.devnet import Devnet` (see dapi.devnet.runner). The export is lazy so that importing the
pure schedule logic (`dapi.devnet.schedule`) does not pull in the servers.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from dapi.devnet.runner import Devnet

__all__ = ["Devnet"]


def __getattr__(name: str) -> Any:
    if name == "Devnet":
        from dapi.devnet.runner import Devnet

        return Devnet
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
