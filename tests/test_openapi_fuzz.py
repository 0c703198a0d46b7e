"""Schemathesis over all three OpenAPI specs, against the real daemon running on a devnet.

Checks (schemathesis defaults): no 5xx, every status answered is documented, responses match their
documented schema and content type. The daemon runs in its own thread and event loop, reached over
real HTTP, exactly as a client would.
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.core.result import Err
from schemathesis.specs.openapi.checks import positive_data_acceptance

from dapi.testbed.session import DevnetSession

EXAMPLES = 25


@pytest.fixture(scope="module")
def live() -> Iterator[DevnetSession]:
    ready = threading.Event()
    holder: dict[str, Any] = {}

    def run() -> None:
        async def main() -> None:
            async with DevnetSession(participants=2, nodes_per_participant=2, block_time=0.1) as session:
                holder["session"] = session
                holder["loop"] = asyncio.get_running_loop()
                holder["stop"] = stop = asyncio.Event()
                await session.devnet.wait_for_height(3, timeout=30)
                ready.set()
                await stop.wait()

        try:
            asyncio.run(main())
        except BaseException as exc:  # surfaced by the fixture below
            holder["error"] = exc
            ready.set()

    thread = threading.Thread(target=run, name="live-daemon", daemon=True)
    thread.start()
    assert ready.wait(90), "the daemon did not start"
    if "error" in holder:
        raise holder["error"]
    yield holder["session"]
    holder["loop"].call_soon_threadsafe(holder["stop"].set)
    thread.join(30)


fuzz = settings(max_examples=EXAMPLES, deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])


def fuzz_all_operations(url: str, excluded: list[Any] | None = None, path_parameters: dict[str, str] | None = None) -> int:
    """Run every operation of the spec at ``url``; returns how many operations were exercised.

    ``path_parameters`` replace the generated values of the path parameters they name (a made-up node
    secret only ever reaches the 404 of an unknown callback URL, never the body checks behind it).
    """
    schema = schemathesis.openapi.from_url(url + "/openapi.json")
    count = 0
    for result in schema.get_all_operations():
        if isinstance(result, Err):
            raise result.err()
        operation = result.ok()

        @given(case=operation.as_strategy())
        @fuzz
        def check(case: Any) -> None:
            for name, value in (path_parameters or {}).items():
                if case.path_parameters and name in case.path_parameters:
                    case.path_parameters[name] = value
            case.call_and_validate(excluded_checks=excluded)

        check()
        count += 1
    return count


def test_public_api(live: DevnetSession) -> None:
    assert fuzz_all_operations(live.public_url) >= 8


def node_secret(live: DevnetSession) -> str:
    """The secret in the callback URL of one of the daemon's own ML nodes (kept in its data_dir)."""
    secrets = json.loads((live.daemon.data_dir / "broker_node_nums.json").read_text())["secrets"]
    return str(next(iter(secrets.values())))


def test_ml_callback_api(live: DevnetSession) -> None:
    # A batch's arrays must have equal lengths, which JSON Schema cannot say: schema-valid bodies with
    # unequal arrays are rightly refused with 400, so "schema-valid data is accepted" cannot hold here;
    # nor can it for the shared routes, off (404) by default.
    count = fuzz_all_operations(live.ml_url, excluded=[positive_data_acceptance],
                                path_parameters={"secret": node_secret(live)})
    assert count == 6  # generated and validated on a node's own URL, /v1 and /mlnode/v1


def test_admin_api(live: DevnetSession) -> None:
    # Whether a node is accepted depends on the chain (its models must be governance models), which the
    # schema cannot say: schema-valid nodes with made-up model ids are rightly refused with 400.
    assert fuzz_all_operations(live.admin_url, excluded=[positive_data_acceptance]) >= 8


# Bodies schema-driven generation does not produce, each of which once answered 500: nesting deeper than
# the parser's recursion limit, integer literals beyond the float range (valid JSON), and integers beyond
# the 64-bit range of the protobuf fields they go to.
_GENERATED = {"public_key": "02ab", "block_hash": "H", "block_height": 10, "nonces": [1, 3], "dist": [0.5, 0.7],
              "node_id": 1}
_VALIDATED = {**_GENERATED, "public_key": "035b3d1462dc1577673d973161b7168dc17323339909078367c3b6426cceabfeda",
              "received_dist": [0.1, 0.2], "r_target": 1.4, "fraud_threshold": 1e-07, "n_invalid": 1,
              "probability_honest": 0.5, "fraud_detected": False}
_HUGE = "1" + "0" * 400


def _raw(doc: dict[str, Any], key: str, literal: str) -> str:
    return json.dumps({**doc, key: "@@"}).replace('"@@"', literal)


HOSTILE = [
    ("generated", "[" * 100_000 + "]" * 100_000),
    ("validated", '{"dist": ' + "{\"a\": " * 100_000 + "1" + "}" * 100_001),
    ("generated", _raw(_GENERATED, "dist", f"[0.5, {_HUGE}]")),
    ("validated", _raw(_VALIDATED, "received_dist", f"[{_HUGE}, 0.2]")),
    ("validated", _raw(_VALIDATED, "r_target", _HUGE)),
    ("validated", _raw(_VALIDATED, "probability_honest", "-" + _HUGE)),
    ("validated", _raw(_VALIDATED, "n_invalid", str(2**63))),
    ("generated", _raw(_GENERATED, "node_id", str(2**63))),
    ("validated", _raw(_VALIDATED, "public_key", '"03cd"')),
]


@pytest.mark.parametrize(("route", "body"), HOSTILE)
def test_ml_callback_hostile_bodies(live: DevnetSession, route: str, body: str) -> None:
    response = httpx.post(f"{live.ml_url}/n/{node_secret(live)}/v1/poc-batches/{route}", content=body, timeout=30)
    assert response.status_code == 400, response.text[:300]
    assert response.json()["error"]
    for prefix in ("/v1", "/mlnode/v1"):  # the shared routes are off: refused before the body is read
        response = httpx.post(f"{live.ml_url}{prefix}/poc-batches/{route}", content=body, timeout=30)
        assert response.status_code == 404, response.text[:300]
        assert "ml_legacy_callbacks" in response.json()["error"]
