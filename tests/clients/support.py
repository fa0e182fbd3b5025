"""A real `dr-gateway serve --sandbox` child process on free ports, and a small
stdlib client of the sandbox's HTTP control surface."""

import json
import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BINARY = os.path.join(ROOT, "target", "debug", "dr-gateway")

# Any bearer key works on the sandbox; sk_test_ keys make test-mode objects.
SANDBOX_KEY = "sk_test_python_clients"
STARTUP_DEADLINE_S = 60.0
SHUTDOWN_GRACE_S = 10
# A drain that ends on its own is far quicker than the grace period; one cut off by
# the grace timer also exits 0, so the exit must come well before the timer fires.
DRAIN_DEADLINE_S = SHUTDOWN_GRACE_S / 2
GRACE_EXCEEDED_LOG = "drain took longer than the grace period"


def free_ports(count: int) -> list[int]:
    """Ports the kernel picked as free (bound to port 0 together, then released)."""
    sockets = []
    try:
        for _ in range(count):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            sockets.append(s)
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


class Sandbox:
    """The sandbox's HTTP surface (DR's API and the `/sandbox/` controls), stdlib only."""

    def __init__(self, base_url: str):
        self.base_url = base_url

    def call(self, method: str, path: str, body=None, expect=(200, 201, 202, 204)):
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.base_url + path, data=data, method=method)
        req.add_header("Authorization", f"Bearer {SANDBOX_KEY}")
        if data is not None:
            req.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(req, timeout=10) as resp:
                status, raw = resp.status, resp.read()
        except urllib.error.HTTPError as e:
            status, raw = e.code, e.read()
        if status not in expect:
            raise AssertionError(f"sandbox {method} {path} answered {status}: {raw[:500]!r}")
        return json.loads(raw) if raw else None

    def post_raw_json(self, path: str, raw: bytes, expect=(200, 201, 202)) -> dict:
        """POSTs JSON text as written (json.dumps cannot write a number like 1e400)."""
        req = urllib.request.Request(self.base_url + path, data=raw, method="POST")
        req.add_header("Authorization", f"Bearer {SANDBOX_KEY}")
        req.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(req, timeout=10) as resp:
                status, body = resp.status, resp.read()
        except urllib.error.HTTPError as e:
            status, body = e.code, e.read()
        if status not in expect:
            raise AssertionError(f"sandbox POST {path} answered {status}: {body[:500]!r}")
        return json.loads(body) if body else None

    def create_order(self, items: list[dict], **spec) -> dict:
        """`POST /sandbox/orders` with a unique upstream id; returns DR's order JSON."""
        spec.setdefault("upstreamId", f"py-{uuid.uuid4().hex[:12]}")
        return self.call("POST", "/sandbox/orders", {"items": items, **spec}, expect=(201,))

    def requests(self, method: str, path: str) -> list[dict]:
        """The DR requests the sandbox received (`GET /sandbox/requests`)."""
        query = urllib.parse.urlencode({"method": method, "path": path})
        return self.call("GET", f"/sandbox/requests?{query}")["data"]

    def webhooks(self) -> list[dict]:
        return self.call("GET", "/sandbox/webhooks")["data"]


class Gateway:
    """One `dr-gateway serve --sandbox` child process on free loopback ports."""

    def __init__(self, log_path: str, *extra_args: str, plaintext_health: bool = False):
        """`extra_args`: more `serve` flags. `plaintext_health`: also serve health alone
        in plaintext (`--grpc-health-addr`), which start-up then polls (for a gateway
        whose API port speaks TLS)."""
        self.log_path = log_path
        grpc_port, http_port, sandbox_port, health_port = free_ports(4)
        self.grpc_target = f"127.0.0.1:{grpc_port}"
        self.health_target = f"127.0.0.1:{health_port}" if plaintext_health else self.grpc_target
        self.sandbox = Sandbox(f"http://127.0.0.1:{sandbox_port}")
        self.argv = [
            BINARY, "serve", "--sandbox",
            "--grpc-addr", self.grpc_target,
            "--http-addr", f"127.0.0.1:{http_port}",
            "--sandbox-addr", f"127.0.0.1:{sandbox_port}",
            "--shutdown-grace", f"{SHUTDOWN_GRACE_S}s",
            *(["--grpc-health-addr", self.health_target] if plaintext_health else []),
            *extra_args,
        ]
        self.process = None

    def start(self) -> None:
        """Starts the binary and returns once gRPC health says SERVING and the sandbox's
        webhooks point at the gateway (events flow end to end from then on)."""
        if not os.access(BINARY, os.X_OK):
            raise pytest.UsageError(f"{BINARY} is missing: cargo build --locked --bin dr-gateway")
        # why: a DR_GATEWAY_* variable in the caller's shell would change the flags' defaults.
        env = {k: v for k, v in os.environ.items() if not k.startswith("DR_GATEWAY_")}
        env.setdefault("RUST_LOG", "info")
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(self.argv, stdout=log, stderr=subprocess.STDOUT, env=env)
        try:
            deadline = time.monotonic() + STARTUP_DEADLINE_S
            self._wait_until_serving(deadline)
            self._wait_until_webhooks_registered(deadline)
        except BaseException:
            self.process.kill()
            self.process.wait()
            raise

    def _check_alive(self) -> None:
        if self.process.poll() is not None:
            raise AssertionError(
                f"dr-gateway exited with {self.process.returncode} during start-up:\n{self.log_tail()}"
            )

    def _wait_until_serving(self, deadline: float) -> None:
        # why: after a refused connection grpcio waits 1 s before retrying by default.
        quick_reconnect = [
            ("grpc.initial_reconnect_backoff_ms", 20),
            ("grpc.min_reconnect_backoff_ms", 20),
            ("grpc.max_reconnect_backoff_ms", 100),
        ]
        with grpc.insecure_channel(self.health_target, options=quick_reconnect) as channel:
            health = health_pb2_grpc.HealthStub(channel)
            while True:
                self._check_alive()
                try:
                    # wait_for_ready: until the listener is up, the call waits (at most its
                    # short timeout) for the connection instead of failing at once.
                    reply = health.Check(
                        health_pb2.HealthCheckRequest(service=""), timeout=0.25, wait_for_ready=True
                    )
                    if reply.status == health_pb2.HealthCheckResponse.SERVING:
                        return
                    time.sleep(0.02)  # answered NOT_SERVING: poll again shortly
                except grpc.RpcError:
                    pass
                if time.monotonic() > deadline:
                    raise AssertionError(f"gRPC health never said SERVING:\n{self.log_tail()}")

    def _wait_until_webhooks_registered(self, deadline: float) -> None:
        # why: health turns SERVING before `serve --sandbox` registers the gateway's
        # webhook with its sandbox; an order created in between would have its
        # events sent nowhere.
        while not self.sandbox.webhooks():
            self._check_alive()
            if time.monotonic() > deadline:
                raise AssertionError(f"the sandbox's webhooks never pointed at the gateway:\n{self.log_tail()}")
            time.sleep(0.02)

    def stop(self) -> tuple[int, float]:
        """SIGTERM, then waits for the exit; returns (exit code, seconds it took).
        Kills the process if it outlives the grace period (and says so)."""
        if self.process is None or self.process.poll() is not None:
            return (self.process.returncode if self.process else 0), 0.0
        started = time.monotonic()
        self.process.send_signal(signal.SIGTERM)
        try:
            code = self.process.wait(timeout=SHUTDOWN_GRACE_S + 5)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            raise AssertionError(f"dr-gateway ignored SIGTERM for {SHUTDOWN_GRACE_S + 5} s:\n{self.log_tail()}")
        return code, time.monotonic() - started

    def assert_stops_gracefully(self) -> None:
        code, took = self.stop()
        assert code == 0, f"dr-gateway exited with {code} after SIGTERM:\n{self.log_tail()}"
        assert took < DRAIN_DEADLINE_S, f"dr-gateway took {took:.1f} s to drain:\n{self.log_tail()}"
        assert GRACE_EXCEEDED_LOG not in self.log(), self.log_tail()

    def log(self) -> str:
        with open(self.log_path, encoding="utf-8", errors="replace") as f:
            return f.read()

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(self.log().splitlines()[-lines:])
