"""``dapi run``: every component wired together, started in dependency order, stopped in reverse.

Start: storage (outbox, node store) → chain client → broker (+ node registration, retried in the
background while the chain is unreachable) → HTTP servers → block dispatcher and websocket. The
public ``/v1/status`` answers as soon as the servers are up, whether or not the chain is reachable.

Stop (SIGTERM/SIGINT): intake first (websocket, callback server), then the duties in flight, then
the outbox (everything answered 200 is committed), the broker's workers, the other servers, and the
chain connections.
"""

from __future__ import annotations

import asyncio
import socket
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from dapi import __version__
from dapi.broker import Broker, QueryChainReader
from dapi.broker.errors import BrokerError, GovernanceUnavailable
from dapi.chain.client import ChainClient, connect
from dapi.chain.errors import ChainError
from dapi.chain.keys import SigningKey, address_from_public_key, public_key_from_base64
from dapi.chain.outbox import Outbox
from dapi.chain.pricing import DynamicPricing
from dapi.chain.tx import TxSigner
from dapi.chain.view import ChainView
from dapi.config import Config, ConfigError, signer_secret
from dapi.event_listener.dispatcher import Dispatcher
from dapi.event_listener.follower import BlockFollower
from dapi.event_listener.subscription import ChainSubscription
from dapi.inference.broker_nodes import BrokerNodePool
from dapi.inference.service import InferenceService, build_inference, inference_http
from dapi.inference.stats import InferenceStats
from dapi.inference.validation_service import ValidationService
from dapi.logs import get_logger
from dapi.metrics import Metrics
from dapi.node_store import NodeStore
from dapi.poc.seeds import SeedManager
from dapi.poc.validation import BatchValidator
from dapi.runtime.backoff import Backoff
from dapi.runtime.files import private_dir, readable_by_others
from dapi.runtime.http_pool import ShardedClient
from dapi.runtime.serving import ConnectionLimits, EmbeddedServer, bind_socket
from dapi.runtime.signals import install_stop_signals
from dapi.runtime.tasks import TaskOwner
from dapi.server.admin.app import create_admin_app
from dapi.server.mlnode.app import BrokerNodes, create_mlnode_app
from dapi.server.public.app import create_public_app

log = get_logger("dapi.daemon")

STOP_GRACE = 8.0  # the whole stop must fit in 10 s (DESIGN.md §4.1)


@dataclass(frozen=True, slots=True)
class Identity:
    """Who this API node acts for: the participant account, and the key that signs for it (if any)."""

    account_address: str
    account_public_key: bytes
    signer: SigningKey | None

    @property
    def read_only(self) -> bool:
        return self.signer is None

    @property
    def pubkey_hex(self) -> str:
        return self.account_public_key.hex()


def resolve_identity(config: Config) -> Identity:
    secret = signer_secret(config)
    signer: SigningKey | None = None
    if secret is not None:
        try:
            signer = SigningKey.parse(secret)
        except ValueError as exc:
            raise ConfigError(f"signer key (DAPI_SIGNER_KEY or chain_node.signer_key_file): {exc}") from None
    account_b64 = config.chain_node.account_public_key
    if account_b64:
        try:
            account_key = public_key_from_base64(account_b64)
        except ValueError as exc:
            raise ConfigError(f"chain_node.account_public_key: {exc}") from None
    elif signer is not None:
        account_key = signer.public_key  # the signer is the participant's own account key
    else:
        raise ConfigError("chain_node.account_public_key: required (or a signer key, which then is the account)")
    return Identity(address_from_public_key(account_key), account_key, signer)


def warn_about_readable_secrets(config: Config) -> None:
    """One warning line per file holding a secret that group or others can read."""
    for holds, path in config.secret_files():
        if readable_by_others(path):
            log.warning("file holding a secret is readable by group or others; chmod 600 it",
                        file=str(path), holds=holds)


@dataclass
class Daemon:
    """The ``dapi run`` process: :meth:`start` starts the components in dependency order, :meth:`stop` in reverse.

    Args:
        config: the validated config.
        identity: the participant account and the signer key, as :func:`resolve_identity` derives them.
        metrics: the Prometheus metrics this daemon reports, in a registry of its own.
        view: what the daemon knows of the chain, shared by the dispatcher and the APIs.
        started_at: the monotonic time the daemon was made, for the uptime in ``/v1/status``.
    """

    config: Config
    identity: Identity
    metrics: Metrics = field(default_factory=Metrics)
    view: ChainView = field(default_factory=ChainView)
    started_at: float = field(default_factory=time.monotonic)

    def __post_init__(self) -> None:
        self.data_dir = self.config.data_path
        self.chain: ChainClient | None = None
        self.outbox: Outbox | None = None
        self.broker: Broker | None = None
        self.store = NodeStore(self.data_dir / "nodes.json")
        self.seeds: SeedManager | None = None
        self.validation: ValidationService | None = None
        self.dispatcher: Dispatcher | None = None
        self.follower: BlockFollower | None = None
        self.subscription: ChainSubscription | None = None
        self.servers: dict[str, EmbeddedServer] = {}
        self.inference: InferenceService | None = None
        self.inference_stats = InferenceStats(on_record=self.metrics.inference_request,
                                              on_retry=self.metrics.inference_retried)
        self._http: ShardedClient | None = None
        self._tasks = TaskOwner("daemon")
        self.registration_error = ""
        self.should_exit = asyncio.Event()

    # -- lifecycle -------------------------------------------------------------------------------

    def _bind(self) -> dict[str, socket.socket]:
        """Take the three ports first: a clash fails here, before anything else started.

        Port 0 gives an OS-chosen port; the callback URL the ML nodes get then follows the ML server's
        real port.
        """
        api = self.config.api
        sockets: dict[str, socket.socket] = {}
        try:
            for name, host, port in (("public", api.bind_host, api.public_server_port),
                                     ("ml", api.bind_host, api.ml_server_port),
                                     ("admin", api.admin_bind_host, api.admin_server_port)):
                try:
                    sockets[name] = bind_socket(host, port)
                except OSError as exc:
                    raise ConfigError(f"api: cannot listen on {host}:{port} for the {name} server: {exc.strerror}") \
                        from None
        except BaseException:
            for sock in sockets.values():
                sock.close()
            raise
        if api.ml_server_port == 0:
            parts = urlsplit(api.poc_callback_url)
            if parts.port == 0:
                ml_port = sockets["ml"].getsockname()[1]
                api.poc_callback_url = urlunsplit(parts._replace(netloc=f"{parts.hostname}:{ml_port}"))
        return sockets

    async def start(self) -> None:
        cfg = self.config
        sockets = self._bind()
        private_dir(self.data_dir)
        log.info("starting", version=__version__, account=self.identity.account_address,
                 read_only=self.identity.read_only, chain=cfg.chain_node.url, data_dir=str(self.data_dir))
        warn_about_readable_secrets(cfg)
        if self.identity.read_only:
            log.warning("no signer key (DAPI_SIGNER_KEY or chain_node.signer_key_file): read-only, "
                        "no transactions will be sent")
        await self.store.load()
        chain = self.chain = connect(cfg.chain_node)
        self.outbox = Outbox(
            self.data_dir / "outbox.sqlite",
            broadcaster=chain.broadcaster if self.identity.signer else None,
            signer_factory=self._make_signer if self.identity.signer else None,
            settings=cfg.outbox,
            metrics=self.metrics,
        )
        await self.outbox.start()
        tx_sink = self.outbox if self.identity.signer else None
        self.broker = Broker(
            chain=QueryChainReader(chain.query, chain.rpc),
            participant_address=self.identity.account_address,
            participant_pubkey_hex=self.identity.pubkey_hex,
            poc_callback_url=cfg.api.poc_callback_url,
            settings=cfg.broker,
            data_dir=self.data_dir,
            tx_sink=tx_sink,
        )
        await self.broker.start()
        self._tasks.spawn(self._register_nodes(), "register-nodes")
        await self._start_servers(sockets)
        self.seeds = SeedManager(self.data_dir / "seeds.json", key=self.identity.signer,
                                 account_address=self.identity.account_address, tx_sink=tx_sink)
        await self.seeds.load()
        await self._start_validation()
        broker = self.broker
        validator = BatchValidator(chain.query, chain.rpc,
                                   lambda: [h.client for h in broker.validating_nodes()],
                                   own_hex_pubkey=self.identity.pubkey_hex)
        self.dispatcher = Dispatcher(rpc=chain.rpc, query=chain.query, broker=broker, view=self.view,
                                     seeds=self.seeds, validator=validator, metrics=self.metrics)
        self.follower = BlockFollower(chain.rpc, self.dispatcher.process, metrics=self.metrics)
        self.subscription = ChainSubscription(chain.rpc.websocket_url, self.follower.on_block)
        self.follower.start()
        self.subscription.start()
        log.info("started", public=self.servers["public"].url, ml=self.servers["ml"].url,
                 admin=self.servers["admin"].url)

    async def _start_validation(self) -> None:
        """Inference validation (sampling, re-runs, MsgValidation) and the claim gate; only with a signer."""
        if self.identity.read_only:
            return
        assert self.chain and self.broker and self.outbox and self.seeds
        self.validation = ValidationService(
            data_dir=self.data_dir, rpc=self.chain.rpc, query=self.chain.query, view=self.view, nodes=self.broker,
            outbox=self.outbox, lookup=self.chain.broadcaster, seeds=self.seeds,
            account=self.identity.account_address, metrics=self.metrics,
            poll_interval=max(0.05, min(0.5, self.config.outbox.poll_interval)),
        )
        await self.validation.start()

    async def _make_signer(self) -> TxSigner:
        assert self.chain is not None and self.identity.signer is not None
        signer = self.identity.signer
        account = await self.chain.query.account(signer.address)
        return TxSigner(signer, chain_id=self.config.chain_node.chain_id, account_number=account.account_number,
                        account_address=self.identity.account_address, timeout_seconds=self.config.outbox.tx_timeout)

    async def _start_servers(self, sockets: dict[str, socket.socket]) -> None:
        api = self.config.api
        assert self.broker is not None and self.outbox is not None and self.chain is not None
        broker, chain = self.broker, self.chain
        self.inference = self._build_inference()
        public = create_public_app(cache=broker.epoch_cache, chain=self.view, status=self.status,
                                   poc_batches=chain.query.poc_batches_for_stage,
                                   dynamic_pricing=DynamicPricing(chain.query, self.view), metrics=self.metrics,
                                   before_metrics=self._refresh_metrics, inference=self.inference)
        ml = create_mlnode_app(nodes=BrokerNodes(broker), outbox=self.outbox,
                               account_address=self.identity.account_address,
                               participant_pubkey_hex=self.identity.pubkey_hex,
                               legacy_callbacks=api.ml_legacy_callbacks, metrics=self.metrics,
                               body_limit=api.ml_body_limit, max_tx_bytes=self.config.chain_node.max_tx_bytes)
        admin = create_admin_app(broker=broker, store=self.store, outbox=self.outbox, token=api.admin_token,
                                 daemon=self, tasks=self._tasks)
        limits = ConnectionLimits(request_read_timeout=api.request_read_timeout, max_connections=api.max_connections)
        for name, app, host in (("public", public, api.bind_host), ("ml", ml, api.bind_host),
                                ("admin", admin, api.admin_bind_host)):
            server = EmbeddedServer(app, host=host, sock=sockets.pop(name), limits=limits)
            await server.start()
            self.servers[name] = server

    def _build_inference(self) -> InferenceService:
        """The TA and executor (DESIGN.md §8); read-only without a signer key."""
        assert self.broker is not None and self.chain is not None and self.outbox is not None
        self._http = inference_http()
        return build_inference(
            address=self.identity.account_address, signer=self.identity.signer, query=self.chain.query,
            rpc=self.chain.rpc, view=self.view, nodes=BrokerNodePool(self.broker),
            sink=self.outbox if self.identity.signer else None, http=self._http,
            public_url=self.config.api.public_url, stats=self.inference_stats)

    async def _register_nodes(self) -> None:
        """Register the configured (and admin-added) nodes, retrying while governance cannot be read."""
        assert self.broker is not None
        pending = self.store.effective(list(self.config.nodes))
        backoff = Backoff(1.0, 30.0)
        while pending:
            results = await self.broker.register_many(pending)
            retry = []
            for config, result in zip(pending, results, strict=True):
                if isinstance(result, GovernanceUnavailable):
                    retry.append(config)
                elif isinstance(result, BrokerError):
                    log.error("node not registered", node_id=config.id, reason=str(result))
            pending = retry
            if pending:
                self.registration_error = f"{len(pending)} node(s) waiting for the chain's governance models"
                delay = backoff.failed(self.registration_error)
                log.warning("node registration waits for the chain", nodes=[c.id for c in pending],
                            retry_in=round(delay, 2))
                await asyncio.sleep(delay)
        self.registration_error = ""
        # From now on only registered nodes' URLs work (a node dropped from the config is refused).
        await self.broker.forget_unregistered_secrets()
        # Tell the chain about the nodes now rather than a sync interval later: an epoch formed before
        # the chain knows them would leave them without a model.
        try:
            await self.broker.sync_hardware_now()
        except ChainError as exc:
            log.warning("first hardware sync failed; the periodic one will retry", error=str(exc))

    async def stop(self) -> None:
        log.info("stopping")
        deadline = time.monotonic() + STOP_GRACE

        async def bounded(what: str, coro: Any) -> None:
            left = max(0.1, deadline - time.monotonic())
            try:
                await asyncio.wait_for(coro, left)
            except TimeoutError:
                log.error("stop step timed out", step=what)
            except Exception:
                log.exception("stop step failed", step=what)

        if self.subscription is not None:
            await bounded("websocket", self.subscription.stop())
        if self.follower is not None:
            await bounded("block follower", self.follower.stop())
        if "ml" in self.servers:
            await bounded("ml server", self.servers.pop("ml").stop(1.0))
        if self.dispatcher is not None:
            await bounded("dispatcher duties", self.dispatcher.stop())
        await self._tasks.stop()
        if self.validation is not None:
            await bounded("inference validation", self.validation.stop())
        if self.outbox is not None:
            await bounded("outbox", self.outbox.stop())
        if self.broker is not None:
            await bounded("broker", self.broker.stop())
        for name in list(self.servers):
            await bounded(f"{name} server", self.servers.pop(name).stop(1.0))
        if self._http is not None:
            await bounded("inference http client", self._http.aclose())
        if self.chain is not None:
            await bounded("chain client", self.chain.aclose())
        log.info("stopped")

    # -- status ----------------------------------------------------------------------------------

    def _refresh_metrics(self) -> None:
        if self.broker is None:
            return
        for status, count in self.broker.metrics().nodes_by_status.items():
            self.metrics.nodes_by_status.labels(status=status).set(count)
        if self.chain is not None:
            self.metrics.chain_queries.set(self.chain.query.calls)

    def status(self) -> dict[str, Any]:
        snapshot = self.view.snapshot
        age = None if self.view.updated_at is None else round(time.monotonic() - self.view.updated_at, 3)
        chain: dict[str, Any] = {
            "url": self.config.chain_node.url,
            "transport": "grpc" if self.config.chain_node.grpc_url else "abci",
            "websocket_connected": bool(self.subscription and self.subscription.connected.is_set()),
            "synced": bool(snapshot and snapshot.synced),
            "last_height": snapshot.height if snapshot else None,
            "seconds_since_last_block": age,
            "epoch": snapshot.latest_epoch.index if snapshot else None,
            "phase": str(snapshot.phase) if snapshot else None,
        }
        if self.subscription is not None and not self.subscription.connected.is_set():
            chain["last_error"] = self.subscription.last_error
        broker = self.broker.metrics() if self.broker else None
        components: dict[str, Any] = {
            "broker": {"healthy": broker is not None, "nodes_by_status": broker.nodes_by_status if broker else {},
                       "registration": self.registration_error or "done"},
            "outbox": {"healthy": self.outbox is not None, "depth": self.metrics.outbox_depth_value(),
                       "sending": bool(self.outbox and self.outbox.can_send)},
            "follower": self.follower.status() if self.follower else BlockFollower.idle_status(),
            "inference": {"serving": bool(self.inference and self.inference.ta), **self.inference_stats.summary()},
        }
        components["validation"] = self.validation.status() if self.validation else ValidationService.disabled()
        return {
            "version": __version__,
            "account_address": self.identity.account_address,
            "read_only": self.identity.read_only,
            "uptime_seconds": round(time.monotonic() - self.started_at, 1),
            "chain": chain,
            "components": components,
        }


async def run(config: Config) -> int:
    """Run until SIGTERM/SIGINT; 0 after a graceful stop."""
    identity = resolve_identity(config)
    daemon = Daemon(config, identity)
    remove_signals = install_stop_signals(daemon.should_exit)
    try:
        await daemon.start()
        await daemon.should_exit.wait()
    finally:
        await daemon.stop()
        remove_signals()
    return 0
