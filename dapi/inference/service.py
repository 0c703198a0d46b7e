"""The inference path as the public API sees it: one object holding the TA, the executor and the reads.

Built by the daemon (`build_inference`), served by `dapi.server.public.inference_routes`. Without a
signer key the daemon cannot sign Start or Finish, so `ta` and `executor` are None and chat requests
are refused with 503; the read routes still answer.
"""

from __future__ import annotations

from dataclasses import dataclass

import httpx

from dapi.chain.keys import SigningKey
from dapi.chain.query import ChainQuery
from dapi.chain.rpc import CometRPC
from dapi.chain.view import ChainView
from dapi.inference.bandwidth import BandwidthLimiter
from dapi.inference.chain_facts import ChainFacts
from dapi.inference.checks import ReplayGuard
from dapi.inference.directory import ExecutorDirectory
from dapi.inference.executor import HttpClient, InferenceExecutor, InferenceNodes, MessageSink
from dapi.inference.stats import InferenceStats
from dapi.inference.transfer_agent import TransferAgent
from dapi.runtime.http_pool import ShardedClient

__all__ = ["InferenceService", "build_inference", "inference_http"]


def inference_http() -> ShardedClient:
    """The client the TA and the executor forward with.

    Sharded (see dapi.runtime.http_pool: one httpx pool slows down as its connections grow), and idle
    connections are dropped after 4 s, before the 5 s after which uvicorn (another API node) and vLLM
    servers close theirs: a request sent on a connection just as the server closes it fails.
    """
    limits = httpx.Limits(max_connections=250, max_keepalive_connections=32, keepalive_expiry=4.0)
    return ShardedClient(8, timeout=httpx.Timeout(300.0, connect=5.0), limits=limits)


@dataclass
class InferenceService:
    """The chat roles (None without a signer key) and the reads the inference routes serve."""

    query: ChainQuery
    view: ChainView
    directory: ExecutorDirectory
    stats: InferenceStats
    ta: TransferAgent | None = None
    executor: InferenceExecutor | None = None


def build_inference(*, address: str, signer: SigningKey | None, query: ChainQuery, rpc: CometRPC, view: ChainView,
                    nodes: InferenceNodes, sink: MessageSink | None, http: HttpClient, public_url: str,
                    stats: InferenceStats | None = None, timeout: httpx.Timeout | None = None) -> InferenceService:
    stats = stats or InferenceStats()
    directory = ExecutorDirectory(rpc, view)
    service = InferenceService(query, view, directory, stats)
    if signer is None or sink is None:
        return service
    facts = ChainFacts(query, rpc, view)
    replay = ReplayGuard()  # one guard: the TA and executor roles are separate bits of one entry
    service.executor = InferenceExecutor(address=address, signer=signer, chain=facts, nodes=nodes, sink=sink,
                                         http=http, replay=replay, stats=stats, timeout=timeout)
    service.ta = TransferAgent(address=address, signer=signer, chain=facts, directory=directory,
                               local=service.executor, sink=sink, http=http, public_url=public_url, replay=replay,
                               stats=stats, bandwidth=BandwidthLimiter(), timeout=timeout)
    return service

