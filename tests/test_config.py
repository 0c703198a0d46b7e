"""Config loading: YAML, env overrides, NODE_CONFIG_PATH, and one-line errors naming the key."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from dapi.config import ConfigError, load_config, signer_secret

REPO = Path(__file__).resolve().parent.parent

# A config written for the reference daemon (reference/http.md §5.2): sections we do not use must load.
REFERENCE_CONFIG = """
api:
  port: 8080
  poc_callback_url: http://api:9100
  ml_grpc_callback_address: api-private:9300
  public_url: http://localhost:8080
  public_server_port: 9000
  ml_server_port: 9100
  admin_server_port: 9200
  ml_grpc_server_port: 9300
  test_mode: false
nodes:
  - id: node1
    host: inference
    inference_segment: /v3.0.8
    inference_port: 5000
    poc_segment: ""
    poc_port: 8080
    max_concurrent: 500
    models:
      Qwen/Qwen2.5-7B-Instruct:
        args: ["--quantization", "fp8"]
    hardware:
      - type: A100
        count: 1
    version: v3.0.8
merged_node_config: true
chain_node:
  url: http://node:26657
  is_genesis: false
  seed_api_url: http://seed:8000
  account_public_key: ""
  signer_key_name: alice
  keyring_backend: test
  keyring_dir: /root/.inference
upcoming_seed: {seed: 1, epoch_index: 2, signature: "ab"}
current_seed: {seed: 3, epoch_index: 1, signature: "cd"}
previous_seed: {seed: 5, epoch_index: 0, signature: "ef"}
current_height: 1234
upgrade_plan: {name: "", height: 0, binaries: {}}
ml_node_key_config: {worker_public: "", worker_private: ""}
node_versions: {versions: [{height: 10, version: v1}]}
nats: {host: 0.0.0.0, port: 4222}
current_node_version: v3.0.8
validation_params: {timestamp_expiration: 10, timestamp_advance: 10, expiration_blocks: 10}
bandwidth_params: {estimated_limits_per_block_kb: 21504, kb_per_input_token: 0.0023, kb_per_output_token: 0.64}
"""


# The same kind of config after the Go daemon has run once: it rewrites the file at every start from its
# structs (koanf's struct provider, then yaml.v3: sorted keys, 4-space indent). Struct fields without a
# koanf tag are written under their Go field name, so each model entry's args become "Args", and the
# chain_node section gains "KeyringPassword". The Go decoder matches keys case-insensitively, so the Go
# daemon reads this back unchanged.
GO_REWRITTEN_CONFIG = """
api:
    admin_server_port: 9200
    ml_grpc_callback_address: api-private:9300
    ml_grpc_server_port: 9300
    ml_server_port: 9100
    poc_callback_url: http://api:9100
    port: 8080
    public_server_port: 9000
    public_url: http://203.0.113.7:8000
    test_mode: false
bandwidth_params:
    estimated_limits_per_block_kb: 21504
    kb_per_input_token: 0.0023
    kb_per_output_token: 0.64
chain_node:
    KeyringPassword: ""
    account_public_key: A1s9FGLcFXdnPZcxYbcWjcFzIzOZCQeDZ8O2QmzOq/7a
    is_genesis: false
    keyring_backend: file
    keyring_dir: /root/.inference
    seed_api_url: http://seed:8000
    signer_key_name: api-warm-key
    url: http://node:26657
current_height: 1204331
current_node_version: v3.0.8
current_seed:
    claimed: false
    epoch_index: 87
    seed: 4915032891
    signature: 9f2c
merged_node_config: true
ml_node_key_config:
    worker_private: ""
    worker_public: ""
nats:
    host: 0.0.0.0
    port: 4222
node_versions:
    versions: []
nodes:
    - hardware:
        - count: 8
          type: H100
      host: inference
      id: node1
      inference_port: 5000
      inference_segment: /v3.0.8
      max_concurrent: 500
      models:
        Qwen/Qwen2.5-7B-Instruct:
            Args:
                - --quantization
                - fp8
                - --gpu-memory-utilization
                - "0.9"
        Qwen/QwQ-32B:
            Args: []
      poc_port: 8080
      poc_segment: ""
      version: v3.0.8
    - hardware: []
      host: 10.0.0.6
      id: node2
      inference_port: 5000
      inference_segment: ""
      max_concurrent: 100
      models:
        Qwen/QwQ-32B:
            Args:
                - --kv-cache-dtype
                - fp8
      poc_port: 8080
      poc_segment: ""
      version: ""
previous_seed:
    claimed: true
    epoch_index: 85
    seed: 77
    signature: 01ab
upcoming_seed:
    claimed: false
    epoch_index: 88
    seed: 912
    signature: c0de
upgrade_plan:
    binaries: {}
    height: 0
    name: ""
validation_params:
    expiration_blocks: 10
    timestamp_advance: 10
    timestamp_expiration: 10
"""


def write(tmp_path: Path, text: str, name: str = "config.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_reference_config_loads_and_keeps_its_values(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, REFERENCE_CONFIG), env={})
    assert config.chain_node.url == "http://node:26657"
    assert config.api.poc_callback_url == "http://api:9100"
    node = config.nodes[0]
    assert node.inference_url == "http://inference:5000/v3.0.8"
    assert node.poc_url == "http://inference:8080"
    assert node.models["Qwen/Qwen2.5-7B-Instruct"].args == ["--quantization", "fp8"]
    assert node.hardware[0].type == "A100" and node.hardware[0].count == 1
    # Defaults of what the reference config does not say.
    assert config.api.admin_bind_host == "127.0.0.1"
    assert (config.api.request_read_timeout, config.api.max_connections) == (30.0, 1000)
    assert config.chain_node.chain_id == "gonka-mainnet"


def test_go_rewritten_config_keeps_every_nodes_model_args(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, GO_REWRITTEN_CONFIG), env={})
    node1, node2 = config.nodes
    assert {k: v.args for k, v in node1.models.items()} == {
        "Qwen/Qwen2.5-7B-Instruct": ["--quantization", "fp8", "--gpu-memory-utilization", "0.9"],
        "Qwen/QwQ-32B": [],
    }
    assert node2.models["Qwen/QwQ-32B"].args == ["--kv-cache-dtype", "fp8"]
    assert node1.inference_url == "http://inference:5000/v3.0.8"
    assert (node1.hardware[0].type, node1.hardware[0].count) == ("H100", 8)
    assert config.chain_node.url == "http://node:26657"
    assert config.api.poc_callback_url == "http://api:9100"


@pytest.mark.parametrize("spelling", ["args", "Args", "ARGS", "aRgS"])
def test_model_entry_keys_are_case_insensitive(tmp_path: Path, spelling: str) -> None:
    text = f"""
chain_node: {{url: "http://node:26657"}}
nodes:
  - {{id: n1, host: h, inference_port: 5000, poc_port: 8080, models: {{m1: {{{spelling}: ["--tp", "2"]}}, m2: {{{spelling}: null}}}}}}
"""
    config = load_config(write(tmp_path, text), env={})
    assert {k: v.args for k, v in config.nodes[0].models.items()} == {"m1": ["--tp", "2"], "m2": []}


@pytest.mark.parametrize(
    ("entry", "expected"),
    [
        ('{argz: ["--tp", "2"]}', r"^nodes\[0\]\.models\.org/m: unknown key 'argz' in a model entry"),
        ('{args: ["--tp"], extra_args: ["2"]}', r"^nodes\[0\]\.models\.org/m: unknown key 'extra_args'"),
        ('{args: ["--tp", "2"], Args: ["--tp", "4"]}', r"^nodes\[0\]\.models\.org/m: 'Args' and another spelling"),
    ],
)
def test_unknown_key_in_a_model_entry_fails_naming_it(tmp_path: Path, entry: str, expected: str) -> None:
    text = f"""
chain_node: {{url: "http://node:26657"}}
nodes:
  - {{id: n1, host: h, inference_port: 5000, poc_port: 8080, models: {{"org/m": {entry}}}}}
"""
    with pytest.raises(ConfigError, match=expected) as info:
        load_config(write(tmp_path, text), env={})
    assert "\n" not in str(info.value)


def test_same_args_under_both_spellings_load(tmp_path: Path) -> None:
    text = """
chain_node: {url: "http://node:26657"}
nodes:
  - {id: n1, host: h, inference_port: 5000, poc_port: 8080, models: {m: {args: ["--tp", "2"], Args: ["--tp", "2"]}}}
"""
    assert load_config(write(tmp_path, text), env={}).nodes[0].models["m"].args == ["--tp", "2"]


@pytest.mark.parametrize(("url", "expected"), [("tcp://node:26657", "http://node:26657"),
                                               ("TCP://10.0.0.2:26657/", "http://10.0.0.2:26657"),
                                               ("https://rpc.example.com", "https://rpc.example.com")])
def test_tcp_chain_url_means_plain_http_as_the_go_client_reads_it(tmp_path: Path, url: str, expected: str) -> None:
    config = load_config(write(tmp_path, f"chain_node: {{url: '{url}'}}\n"), env={})
    assert config.chain_node.url == expected
    config = load_config(write(tmp_path, "chain_node: {url: 'http://x:1'}\n"), env={"DAPI_CHAIN_NODE__URL": url})
    assert config.chain_node.url == expected


def test_shipped_example_configs_load() -> None:
    config = load_config(REPO / "config" / "config.yaml", env={})
    assert [n.id for n in config.nodes] == ["node1"]
    nodes = json.loads((REPO / "config" / "node-config.json").read_text())
    assert nodes[0]["id"] == "node1"


def test_old_list_form_of_models_means_no_args(tmp_path: Path) -> None:
    text = """
chain_node: {url: "http://node:26657"}
nodes:
  - {id: n1, host: h, inference_port: 5000, poc_port: 8080, models: ["Qwen/QwQ-32B", "m2"]}
"""
    config = load_config(write(tmp_path, text), env={})
    assert {k: v.args for k, v in config.nodes[0].models.items()} == {"Qwen/QwQ-32B": [], "m2": []}


def test_env_overrides_follow_the_reference_naming(tmp_path: Path) -> None:
    path = write(tmp_path, "chain_node: {url: 'http://node:26657'}\n")
    config = load_config(
        path,
        env={
            "DAPI_API__PUBLIC_SERVER_PORT": "9555",
            "DAPI_CHAIN_NODE__URL": "http://other:26657",
            "DAPI_CHAIN_NODE__GRPC_URL": "other:9090",
            "ACCOUNT_PUBKEY": "A1s9FGLcFXdnPZcxYbcWjcFzIzOZCQeDZ8O2QmzOq/7a",
            "DAPI_SIGNER_KEY": "never a config key",
            "DAPI_LOG_FORMAT": "console",
        },
    )
    assert config.api.public_server_port == 9555
    assert config.chain_node.url == "http://other:26657"
    assert config.chain_node.grpc_url == "other:9090"
    assert config.chain_node.account_public_key == "A1s9FGLcFXdnPZcxYbcWjcFzIzOZCQeDZ8O2QmzOq/7a"
    assert "signer_key" not in (config.model_extra or {})


@pytest.mark.parametrize(("yaml_value", "env", "expected"), [
    (None, {}, False),
    ("true", {}, True),
    (None, {"DAPI_API__ML_LEGACY_CALLBACKS": "true"}, True),
    ("true", {"DAPI_API__ML_LEGACY_CALLBACKS": "false"}, False),
])
def test_shared_callback_routes_are_off_unless_turned_on(tmp_path: Path, yaml_value: str | None,
                                                         env: dict[str, str], expected: bool) -> None:
    api = f"api: {{ml_legacy_callbacks: {yaml_value}}}\n" if yaml_value else ""
    path = write(tmp_path, api + "chain_node: {url: 'http://node:26657'}\n")
    assert load_config(path, env=env).api.ml_legacy_callbacks is expected


def test_node_config_path_is_merged(tmp_path: Path) -> None:
    nodes = tmp_path / "nodes.json"
    nodes.write_text(json.dumps([{"id": "n2", "host": "h", "inference_port": 1, "poc_port": 2}]))
    path = write(
        tmp_path, "chain_node: {url: 'http://n:26657'}\nnodes:\n  - {id: n1, host: h, inference_port: 1, poc_port: 2}\n"
    )
    config = load_config(path, env={"NODE_CONFIG_PATH": str(nodes)})
    assert [n.id for n in config.nodes] == ["n1", "n2"]


def test_node_config_path_duplicate_with_file_is_fatal(tmp_path: Path) -> None:
    nodes = tmp_path / "nodes.json"
    nodes.write_text(json.dumps([{"id": "n1", "host": "h", "inference_port": 1, "poc_port": 2}]))
    path = write(
        tmp_path, "chain_node: {url: 'http://n:26657'}\nnodes:\n  - {id: n1, host: h, inference_port: 1, poc_port: 2}\n"
    )
    with pytest.raises(ConfigError, match="duplicate node id 'n1'"):
        load_config(path, env={"NODE_CONFIG_PATH": str(nodes)})


@pytest.mark.parametrize(
    ("text", "env", "expected"),
    [
        (
            "chain_node: {url: 'http://n:1'}\n",
            {"DAPI_API__PUBLIC_SERVER_PORT": "abc"},
            r"^api\.public_server_port: .*'abc'",
        ),
        ("api: {ml_server_port: 70000}\nchain_node: {url: 'http://n:1'}\n", {}, r"^api\.ml_server_port: "),
        ("api: {}\n", {}, r"^chain_node: is required"),
        ("chain_node: {grpc_url: 'x:1'}\n", {}, r"^chain_node\.url: is required"),
        ("chain_node: {url: ''}\n", {}, r"^chain_node\.url: must not be empty"),
        (
            "chain_node: {url: 'http://n:1'}\nnodes:\n  - {id: a, host: h, inference_port: 1, poc_port: 2}\n"
            "  - {id: a, host: h, inference_port: 1, poc_port: 2}\n",
            {},
            r"duplicate node id 'a'",
        ),
        (
            "chain_node: {url: 'http://n:1'}\nnodes:\n  - {id: a, host: h, inference_port: 1, poc_port: 2, models: {'': {args: []}}}\n",
            {},
            r"^nodes\[0\]\.models: .*no model id",
        ),
        (
            "chain_node: {url: 'http://n:1'}\nnodes:\n  - {host: h, inference_port: 1, poc_port: 2}\n",
            {},
            r"^nodes\[0\]\.id: is required",
        ),
        (
            "chain_node: {url: 'http://n:1'}\nnodes:\n  - {id: a, host: 'http://h', inference_port: 1, poc_port: 2}\n",
            {},
            r"^nodes\[0\]\.host: must be a host name or an IP address \(got 'http://h'\)",
        ),
        (
            "chain_node: {url: 'http://n:1'}\nnodes:\n  - {id: a, host: h, inference_port: 1, poc_port: 0}\n",
            {},
            r"^nodes\[0\]\.poc_port: ",
        ),
        ("- just\n- a list\n", {}, r"top level must be a mapping"),
        ("chain_node: {url: [\n", {}, r"not valid YAML at line"),
    ],
)
def test_bad_config_fails_with_one_line_naming_the_key(
    tmp_path: Path, text: str, env: dict[str, str], expected: str
) -> None:
    with pytest.raises(ConfigError, match=expected) as info:
        load_config(write(tmp_path, text), env=env)
    assert "\n" not in str(info.value)


def test_yaml_numbers_in_quotes_load_as_the_go_decoder_reads_them(tmp_path: Path) -> None:
    # The Go daemon's YAML decoding is weakly typed ("5000" is a port there); only its JSON is strict.
    text = "chain_node: {url: 'http://n:1'}\nnodes:\n  - {id: a, host: h, inference_port: '5000', poc_port: '8080'}\n"
    node = load_config(write(tmp_path, text), env={}).nodes[0]
    assert (node.inference_port, node.poc_port) == (5000, 8080)


def test_missing_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"nope\.yaml"):
        load_config(tmp_path / "nope.yaml", env={})


def test_signer_key_from_env_beats_file_and_relative_file_resolves_beside_config(tmp_path: Path) -> None:
    sub = tmp_path / "conf"
    sub.mkdir()
    (sub / "signer.key").write_text("ab" * 32 + "\n")
    path = write(sub, "chain_node: {url: 'http://n:1', signer_key_file: signer.key}\n")
    config = load_config(path, env={})
    assert Path(config.chain_node.signer_key_file) == sub / "signer.key"
    assert signer_secret(config, env={}) == "ab" * 32
    assert signer_secret(config, env={"DAPI_SIGNER_KEY": "cd" * 32}) == "cd" * 32


def test_no_signer_means_read_only(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, "chain_node: {url: 'http://n:1'}\n"), env={})
    assert signer_secret(config, env={}) is None


def test_unreadable_signer_key_file_names_the_key(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, "chain_node: {url: 'http://n:1', signer_key_file: /nonexistent/k}\n"), env={})
    with pytest.raises(ConfigError, match=r"^chain_node\.signer_key_file: cannot read"):
        signer_secret(config, env={})


def test_loading_prints_nothing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # The reference has the same rule: tools parse the daemon's stdout.
    load_config(write(tmp_path, REFERENCE_CONFIG), env={})
    assert capsys.readouterr().out == ""
