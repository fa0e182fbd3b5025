#!/usr/bin/env python3
"""Runs the README's quick-start examples as written, against a real gateway.

The README's example blocks (between `<!-- examples:start -->` and
`<!-- examples:end -->`) hold shell commands. This script starts the gateway the way
the README says (`serve --sandbox`, default ports), then runs every command in order:

- `curl …` lines run as they are;
- `grpcurl …` lines are translated to `buf curl` (grpcurl is in no registry this
  project can install from; buf's client speaks the same gRPC and, with
  `--reflect-protocol grpc-v1alpha`, the same reflection protocol grpcurl 1.8 uses),
  keeping the request JSON, flags, address and method exactly as written.

A command must exit 0, unless the comment right above it says how grpcurl exits
(`grpcurl exits 73`): grpcurl exits with 64 + the gRPC status code, buf curl with
8 × the code, and the check holds the command to that code. Such an error's output
must carry its `google.rpc.ErrorInfo`; a stream cut by `-max-time` must have
delivered events first. Exit code 0 means every example works.
"""

import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BUF = os.path.join(ROOT, "tools", "node_modules", ".bin", "buf")
BINARY = os.path.join(ROOT, "target", "debug", "dr-gateway")


# grpcurl exits with 64 + the gRPC status code of a failed RPC; buf curl with 8 × it.
GRPCURL_STATUS_OFFSET = 64
BUF_STATUS_FACTOR = 8


def example_commands(readme: str) -> list[tuple[str, str]]:
    """(command, the comment lines right above it) of the example blocks, with
    continuation lines joined."""
    start = readme.index("<!-- examples:start -->")
    end = readme.index("<!-- examples:end -->")
    section = readme[start:end]
    commands = []
    for block in re.findall(r"```sh\n(.*?)```", section, re.S):
        joined = re.sub(r"\\\n\s*", " ", block)
        comment = []
        for line in joined.splitlines():
            line = line.strip()
            if line.startswith("#"):
                comment.append(line.lstrip("# "))
            elif line:
                commands.append((line, " ".join(comment)))
                comment = []
            else:
                comment = []
    return commands


def expected_grpc_status(comment: str) -> int:
    """The gRPC status code the comment promises (`grpcurl exits 68`), else 0 (OK)."""
    said = re.search(r"grpcurl exits (\d+)", comment)
    return int(said.group(1)) - GRPCURL_STATUS_OFFSET if said else 0


def grpcurl_to_buf(command: str) -> tuple[list[str], bool, str | None]:
    """Translates one grpcurl command line into (argv, is_stream_with_max_time,
    text the output must contain)."""
    args = shlex.split(command)[1:]
    data, max_time, target, rest, flags = None, None, None, [], []
    i = 0
    while i < len(args):
        a = args[i]
        if a == "-plaintext":
            pass
        elif a == "-d":
            data = args[i + 1]
            i += 1
        elif a == "-max-time":
            max_time = args[i + 1]
            i += 1
        elif a == "-emit-defaults":
            flags.append("--emit-defaults")
        elif a.startswith("-"):
            raise SystemExit(f"unsupported grpcurl flag in README example: {a}")
        elif target is None:
            target = a
        else:
            rest.append(a)
        i += 1
    base = [BUF, "curl", "--protocol", "grpc", "--http2-prior-knowledge", "--reflect-protocol", "grpc-v1alpha"]
    if max_time:
        base = [BUF, "--timeout", f"{max_time}s"] + base[1:]
    if rest and rest[0] in ("list", "describe"):
        # buf curl has no describe: the symbol's methods must be listed through
        # reflection, which is what grpcurl describe needs too.
        symbol = rest[1] if len(rest) > 1 else None
        flag = "--list-methods" if symbol else "--list-services"
        return base + [flag, f"http://{target}"], False, symbol
    if len(rest) != 1:
        raise SystemExit(f"cannot translate README example: {command}")
    argv = base + flags + (["-d", data] if data is not None else []) + [f"http://{target}/{rest[0]}"]
    return argv, max_time is not None, None


def wait_for_port(port: int, deadline: float) -> None:
    while time.time() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    raise SystemExit(f"nothing listened on port {port} in time")


def main() -> int:
    with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as f:
        commands = example_commands(f.read())
    serve = [c for c, _ in commands if "serve --sandbox" in c]
    if len(serve) != 1:
        raise SystemExit("the examples must start the gateway with exactly one `serve --sandbox` command")
    serve_args = shlex.split(serve[0].split(" -- ", 1)[1])
    server = subprocess.Popen([BINARY] + serve_args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    failures = 0
    ran = 0
    try:
        deadline = time.time() + 30
        for port in (50051, 8080, 8090):
            wait_for_port(port, deadline)
        for command, comment in commands:
            if command is serve[0]:
                continue
            if command.startswith("grpcurl "):
                argv, streaming, must_contain = grpcurl_to_buf(command)
                status = expected_grpc_status(comment)
                result = subprocess.run(argv, capture_output=True, text=True, timeout=120)
                ok = result.returncode == BUF_STATUS_FACTOR * status
                if streaming:
                    must_contain = '"event"'
                elif status:
                    must_contain = "google.rpc.ErrorInfo"
                if must_contain and must_contain not in result.stdout + result.stderr:
                    ok = False
            elif command.startswith("curl "):
                result = subprocess.run(["bash", "-c", command], capture_output=True, text=True, timeout=60)
                ok = result.returncode == 0
            else:
                raise SystemExit(f"README example is neither curl nor grpcurl: {command}")
            ran += 1
            verdict = "ok" if ok else "FAILED"
            print(f"[{verdict}] {command[:110]}")
            if not ok:
                failures += 1
                print(result.stdout[-2000:], result.stderr[-2000:], sep="\n")
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
    print(f"examples: {ran - failures} passed, {failures} failed")
    return 1 if failures or ran == 0 else 0


if __name__ == "__main__":
    sys.exit(main())
