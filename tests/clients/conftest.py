"""Fixtures for the Python client tests: a real `dr-gateway serve --sandbox` on free
ports (see support.py), a gRPC channel to it, and the sandbox's control surface.

The gateway binary (`target/debug/dr-gateway`) and the Python stubs generated from
`proto/` are prepared by `scripts/check-clients.sh`, which passes the stubs'
directory in `DR_GATEWAY_PY_STUBS`.
"""

import os
import sys

import grpc
import pytest

from support import Gateway, Sandbox

STUBS = os.environ.get("DR_GATEWAY_PY_STUBS")
if not STUBS or not os.path.isdir(os.path.join(STUBS, "digitalriver")):
    raise pytest.UsageError(
        "DR_GATEWAY_PY_STUBS must name a directory of stubs generated from proto/ "
        "(run the tests with `bash scripts/check-clients.sh`)"
    )
sys.path.insert(0, STUBS)


@pytest.fixture(scope="session")
def gateway(tmp_path_factory):
    """The gateway every test shares; at the end it must drain and exit 0 on SIGTERM."""
    gw = Gateway(str(tmp_path_factory.mktemp("gateway") / "dr-gateway.log"))
    gw.start()
    try:
        yield gw
    finally:
        gw.assert_stops_gracefully()


@pytest.fixture
def own_gateway(tmp_path):
    """A gateway for one test (which may stop it); killed afterwards if still running."""
    gw = Gateway(str(tmp_path / "dr-gateway.log"))
    gw.start()
    try:
        yield gw
    finally:
        if gw.process.poll() is None:
            gw.process.kill()
            gw.process.wait()


@pytest.fixture(scope="session")
def channel(gateway):
    with grpc.insecure_channel(gateway.grpc_target) as ch:
        yield ch


@pytest.fixture(scope="session")
def sandbox(gateway) -> Sandbox:
    return gateway.sandbox
