"""All settings of the daemon: pydantic models, YAML loading, environment overrides.

The file format is the reference daemon's (reference/http.md §5), so an operator's existing config
loads unchanged; sections we do not use (seeds, heights, keyring, nats, ...) are kept and ignored.
Everything else in the package receives a typed ``Config``; nothing else reads the environment.

It is one piece on purpose (STYLE.md, "Config in one pydantic module"): every setting, default,
validation rule and environment override an operator may need to look up is in this one file.
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, field_validator, model_validator

from dapi.mlnodeclient.models import node_base_url

ENV_PREFIX = "DAPI_"
# DAPI_* variables that are not config keys: secrets and process settings, never written into the model.
_NON_KEY_ENV = frozenset({"DAPI_SIGNER_KEY", "DAPI_LOG_FORMAT", "DAPI_LOG_LEVEL"})

DEFAULT_ML_BODY_LIMIT = 64 * 1024 * 1024
DEFAULT_MAX_TX_BYTES = 1_048_576  # CometBFT's default mempool max_tx_bytes


# Node ids the admin API accepts: safe to log, show and put in a URL path.
NODE_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]*$"
NODE_ID_MAX_LENGTH = 128

_HOST_LABEL = re.compile(r"[A-Za-z0-9_]([A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?")


def check_host(value: str) -> str:
    """A host name (RFC 1123 labels; ``_`` allowed, as container names use it) or an IP address.

    An IPv6 address may be written bare or in brackets; the URLs built from it get the brackets.
    """
    inner = value[1:-1] if value.startswith("[") and value.endswith("]") else None
    if inner is not None:
        try:
            ipaddress.IPv6Address(inner)
        except ValueError:
            raise ValueError(f"{value!r} is not an IPv6 address in brackets") from None
        if "%" in inner:
            raise ValueError("an IPv6 zone index cannot be used in a URL")
        return value
    if "%" not in value:
        try:
            ipaddress.ip_address(value)
            return value
        except ValueError:
            pass
    name = value.removesuffix(".")
    labels = name.split(".")
    if (not name or len(name) > 253 or not all(_HOST_LABEL.fullmatch(label) for label in labels)
            or labels[-1].isdigit()):  # an all-numeric last label is a broken IPv4 address, not a name
        raise ValueError("must be a host name or an IP address")
    return value


class ConfigError(ValueError):
    """A config that must not start the daemon; the message is one line naming the key."""


class _Section(BaseModel):
    # Unknown keys are kept (and ignored) so a reference config round-trips.
    model_config = ConfigDict(extra="allow", validate_assignment=True)


class ApiConfig(_Section):
    """The ``api`` section: ports and bind addresses of the three servers, URLs given out, admin token, body limit,
    and whether the shared (legacy) PoC callback routes are served."""

    public_server_port: int = Field(9000, ge=0, le=65535)
    ml_server_port: int = Field(9100, ge=0, le=65535)
    admin_server_port: int = Field(9200, ge=0, le=65535)
    poc_callback_url: str = "http://127.0.0.1:9100"
    public_url: str = "http://127.0.0.1:9000"
    bind_host: str = "0.0.0.0"
    admin_bind_host: str = "127.0.0.1"
    admin_token: str = ""
    # The reference's shared PoC callback routes (/v1/poc-batches/..., /mlnode/v1/...), which trust the node
    # number a batch claims. Off: only each node's own URL (<poc_callback_url>/n/<secret>/...) is served.
    ml_legacy_callbacks: bool = False
    ml_body_limit: int = Field(DEFAULT_ML_BODY_LIMIT, gt=0)
    # Per server: seconds a request's headers and body may take to arrive, and open connections.
    request_read_timeout: float = Field(30.0, gt=0)
    max_connections: int = Field(1000, gt=0)

    @field_validator("poc_callback_url", "public_url")
    @classmethod
    def _strip_trailing_slash(cls, value: str) -> str:
        return value.rstrip("/")


class ChainNodeConfig(_Section):
    """The ``chain_node`` section: RPC and optional gRPC address, chain id, account public key, signer key file."""

    url: str
    grpc_url: str = ""
    chain_id: str = "gonka-mainnet"
    account_public_key: str = ""
    signer_key_file: str = ""
    # The chain node's mempool limit (CometBFT `max_tx_bytes`, 1 MiB by default): a PoC batch whose
    # transaction would exceed it is split into several messages before it is accepted.
    max_tx_bytes: int = Field(default=DEFAULT_MAX_TX_BYTES, ge=16 * 1024)

    @field_validator("url")
    @classmethod
    def _url_not_empty(cls, value: str) -> str:
        value = value.strip().rstrip("/")
        if not value:
            raise ValueError("must not be empty")
        scheme, sep, rest = value.partition("://")
        if sep and scheme.lower() == "tcp":
            # CometBFT's own address form; the Go client reads it as plain HTTP, and so do we.
            value = f"http://{rest}"
        if not value.startswith(("http://", "https://")):
            raise ValueError("must be an http(s) (or tcp) URL of the CometBFT RPC")
        return value


class ModelArgs(BaseModel):
    """One model entry of a node: local vLLM arguments.

    Keys are matched case-insensitively, as the Go daemon's decoder does: its config rewrite stores
    them under the Go field name (``Args``), and those arguments must survive the switch. Any other
    key is a mistake that would silently lose arguments, so it fails naming the key.
    """

    model_config = ConfigDict(extra="forbid")
    args: list[str] = Field(default_factory=list)

    @model_validator(mode="before")
    @classmethod
    def _keys_case_insensitive(cls, value: Any) -> Any:
        if value is None:
            return {"args": []}
        if not isinstance(value, dict):
            return value
        found: dict[str, Any] = {}
        for key, item in value.items():
            if not isinstance(key, str) or key.lower() != "args":
                raise ValueError(f"unknown key {key!r} in a model entry (the only key is 'args')")
            item = [] if item is None else item
            if "args" in found and found["args"] != item:
                raise ValueError(f"{key!r} and another spelling of 'args' disagree in one model entry")
            found["args"] = item
        return found


class Hardware(BaseModel):
    """One kind of accelerator in the node and how many of it (for example ``H100``, 8)."""

    model_config = ConfigDict(extra="ignore")
    type: str
    count: int = Field(ge=0, le=2**32 - 1)


class NodeConfig(BaseModel):
    """One ML node: the reference's InferenceNodeConfig (reference/http.md §3.1), same JSON keys."""

    model_config = ConfigDict(extra="ignore")

    id: str = Field(min_length=1, pattern=r"\S")
    host: str = Field(min_length=1, description="Host name or IP address of the ML node")
    inference_port: int = Field(ge=1, le=65535)
    inference_segment: str = ""
    poc_port: int = Field(ge=1, le=65535)
    poc_segment: str = ""
    max_concurrent: int = Field(500, ge=0)
    models: dict[str, ModelArgs] = Field(default_factory=dict)
    hardware: list[Hardware] = Field(default_factory=list)
    version: str = ""

    @field_validator("id")
    @classmethod
    def _id_not_empty(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("node id must not be empty")
        return value

    @field_validator("host")
    @classmethod
    def _host_shape(cls, value: str) -> str:
        return check_host(value)

    @field_validator("models", mode="before")
    @classmethod
    def _models_shape(cls, value: Any) -> Any:
        # Older reference configs list models as plain names; they mean "no extra args".
        if isinstance(value, list):
            converted: dict[str, Any] = {}
            for entry in value:
                if not isinstance(entry, str):
                    raise ValueError(f"a model in the list form must be a model id string (got {entry!r})")
                converted[entry] = {"args": []}
            value = converted
        if value is None:
            return {}
        if isinstance(value, dict):
            for model_id, args in value.items():
                if not isinstance(model_id, str) or not model_id.strip():
                    raise ValueError("a model entry has no model id")
                if args is None:
                    value[model_id] = {"args": []}
        return value

    @property
    def poc_url(self) -> str:
        return node_base_url(self.host, self.poc_port, self.poc_segment)

    @property
    def inference_url(self) -> str:
        return node_base_url(self.host, self.inference_port, self.inference_segment)


class StrictHardware(Hardware):
    """A hardware entry as the admin API reads it: JSON types as strict as Go's decoder (no "8" for 8)."""

    model_config = ConfigDict(extra="ignore", strict=True)


class StrictNodeConfig(NodeConfig):
    """A node as the admin API takes it, in JSON.

    Types are as strict as the Go daemon's JSON decoding (``"1"``, ``1.0`` or ``true`` is not a port),
    and the id is limited to a length and characters that are safe to log, show and use in a path.
    """

    model_config = ConfigDict(extra="ignore", strict=True)

    id: str = Field(min_length=1, max_length=NODE_ID_MAX_LENGTH, pattern=NODE_ID_PATTERN,
                    description="Letters, digits, '.', '_' and '-', starting with a letter or digit; at most 128")
    hardware: list[StrictHardware] = Field(default_factory=list)  # type: ignore[assignment]  # a narrower item type


class BrokerConfig(_Section):
    """The ``broker`` section: poll and hardware-sync intervals, job deadline, retry cap (all in seconds)."""

    status_poll_interval: float = Field(60.0, gt=0)
    hardware_sync_interval: float = Field(60.0, gt=0)
    job_timeout: float = Field(900.0, gt=0)
    retry_backoff_max: float = Field(60.0, gt=0)


class OutboxConfig(_Section):
    """The ``outbox`` section: tx validity, poll interval and retry cap (seconds), and broadcasts in flight."""

    # Validity of each signed tx (its timeout_timestamp); after it passes without inclusion the
    # chain can no longer include that tx, so it is signed afresh and sent again.
    tx_timeout: float = Field(60.0, gt=0)
    poll_interval: float = Field(1.0, gt=0)
    retry_backoff_max: float = Field(30.0, gt=0)
    max_in_flight: int = Field(32, gt=0)


class Config(_Section):
    """The whole daemon config: the reference's file format plus our sections; unknown keys are kept and ignored."""

    api: ApiConfig = Field(default_factory=ApiConfig)
    chain_node: ChainNodeConfig
    nodes: list[NodeConfig] = Field(default_factory=list)
    data_dir: str = "~/.dapi"
    broker: BrokerConfig = Field(default_factory=lambda: BrokerConfig.model_validate({}))
    outbox: OutboxConfig = Field(default_factory=lambda: OutboxConfig.model_validate({}))
    merged_node_config: bool = False
    # The file this config was read from, if that file itself holds api.admin_token (set by load_config).
    _token_file: Path | None = PrivateAttr(default=None)

    @field_validator("nodes", mode="before")
    @classmethod
    def _nodes_none(cls, value: Any) -> Any:
        return [] if value is None else value

    @model_validator(mode="after")
    def _unique_node_ids(self) -> Config:
        seen: set[str] = set()
        for node in self.nodes:
            if node.id in seen:
                raise ValueError(f"duplicate node id {node.id!r}")
            seen.add(node.id)
        return self

    @property
    def data_path(self) -> Path:
        return Path(self.data_dir).expanduser()

    def secret_files(self) -> list[tuple[str, Path]]:
        """The files holding a secret, with what they hold: the signer key file, and the config file
        when the admin token is written in it (not when it comes from the environment)."""
        files: list[tuple[str, Path]] = []
        if self.chain_node.signer_key_file:
            files.append(("signer key", Path(self.chain_node.signer_key_file).expanduser()))
        if self._token_file is not None:
            files.append(("api.admin_token", self._token_file))
        return files


def _set_path(tree: dict[str, Any], dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    node = tree
    for part in parts[:-1]:
        child = node.get(part)
        if not isinstance(child, dict):
            child = {}
            node[part] = child
        node = child
    node[parts[-1]] = value


def apply_env_overrides(raw: dict[str, Any], env: Mapping[str, str]) -> dict[str, Any]:
    """The reference's overlay: ``DAPI_API__PUBLIC_SERVER_PORT`` → ``api.public_server_port``."""
    for name, value in sorted(env.items()):
        if not name.startswith(ENV_PREFIX) or name in _NON_KEY_ENV:
            continue
        key = name[len(ENV_PREFIX) :].lower().replace("__", ".")
        if key:
            _set_path(raw, key, value)
    if env.get("ACCOUNT_PUBKEY"):
        _set_path(raw, "chain_node.account_public_key", env["ACCOUNT_PUBKEY"])
    return raw


def _merge_node_config_file(raw: dict[str, Any], path: str) -> None:
    try:
        extra = json.loads(Path(path).read_text())
    except OSError as exc:
        raise ConfigError(f"NODE_CONFIG_PATH: cannot read {path}: {exc.strerror}") from exc
    except json.JSONDecodeError as exc:
        raise ConfigError(f"NODE_CONFIG_PATH: {path} is not valid JSON: {exc.msg} at line {exc.lineno}") from exc
    if not isinstance(extra, list):
        raise ConfigError(f"NODE_CONFIG_PATH: {path} must hold a JSON list of nodes")
    nodes = raw.get("nodes") or []
    raw["nodes"] = [*nodes, *extra]


def _format_error(exc: ValidationError) -> str:
    err = exc.errors()[0]
    loc = ".".join(f"[{p}]" if isinstance(p, int) else str(p) for p in err["loc"]).replace(".[", "[")
    msg = err["msg"].removeprefix("Value error, ")
    if err["type"] == "missing":
        msg = "is required"
    got = err.get("input")
    detail = f" (got {got!r})" if err["type"] not in ("missing",) and isinstance(got, str | int | float) else ""
    where = loc or "config"
    more = f" (and {len(exc.errors()) - 1} more problem(s))" if len(exc.errors()) > 1 else ""
    return f"{where}: {msg}{detail}{more}"


def parse_config(raw: Mapping[str, Any], *, base_dir: Path | None = None) -> Config:
    try:
        config = Config.model_validate(dict(raw))
    except ValidationError as exc:
        raise ConfigError(_format_error(exc)) from None
    key_file = config.chain_node.signer_key_file
    if key_file and base_dir is not None and not Path(key_file).expanduser().is_absolute():
        # A relative key file lives beside the config, wherever the daemon is started from.
        config.chain_node.signer_key_file = str(base_dir / key_file)
    return config


def load_config(path: str | os.PathLike[str] | None, env: Mapping[str, str] | None = None) -> Config:
    """Read the YAML file, apply env overrides and NODE_CONFIG_PATH, validate. Never prints."""
    env = os.environ if env is None else env
    raw: dict[str, Any] = {}
    base_dir: Path | None = None
    token_file: Path | None = None
    if path is not None:
        file = Path(path)
        try:
            text = file.read_text()
        except OSError as exc:
            raise ConfigError(f"config file {file}: {exc.strerror}") from exc
        try:
            loaded = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f" at line {mark.line + 1}" if mark is not None else ""
            raise ConfigError(f"config file {file}: not valid YAML{where}") from exc
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"config file {file}: the top level must be a mapping of sections")
        raw = loaded
        base_dir = file.resolve().parent
        api = raw.get("api")
        token_file = file if isinstance(api, dict) and api.get("admin_token") else None
    apply_env_overrides(raw, env)
    node_config_path = env.get("NODE_CONFIG_PATH")
    if node_config_path and not raw.get("merged_node_config"):
        _merge_node_config_file(raw, node_config_path)
    config = parse_config(raw, base_dir=base_dir)
    config._token_file = token_file
    return config


def signer_secret(config: Config, env: Mapping[str, str] | None = None) -> str | None:
    """The signer's hex key or mnemonic: ``DAPI_SIGNER_KEY`` first, then ``chain_node.signer_key_file``."""
    env = os.environ if env is None else env
    secret = env.get("DAPI_SIGNER_KEY", "").strip()
    if secret:
        return secret
    key_file = config.chain_node.signer_key_file
    if not key_file:
        return None
    try:
        secret = Path(key_file).expanduser().read_text().strip()
    except OSError as exc:
        raise ConfigError(f"chain_node.signer_key_file: cannot read {key_file}: {exc.strerror}") from exc
    if not secret:
        raise ConfigError(f"chain_node.signer_key_file: {key_file} is empty")
    return secret
