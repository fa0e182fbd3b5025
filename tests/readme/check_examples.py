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
delivered events first.

Then the "Securing the gateway" examples (between `<!-- examples:secure:start -->`
and `<!-- examples:secure:end -->`) run the same way, as one bash script in a fresh
directory, so shell variables, heredocs and files carry from one command to the
next: openssl makes the certificates and the token, the `serve` line starts the
secured gateway in the background (after the first one stopped: same ports), a
`grpcurl` on PATH translates to `buf curl` (TLS flags included), and the section's
```python and ```js blocks run, in order, with the client test environments
(.venv-clients with stubs generated from proto/ in `gen/`, and
tests/clients/node/node_modules; both installed here when missing).
Exit code 0 means every example works.
"""

import hashlib
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
    plaintext = False
    i = 0
    while i < len(args):
        a = args[i]
        if a == "-plaintext":
            plaintext = True
        elif a in ("-cacert", "-cert", "-key", "-H"):
            flags += ["--" + a[1:] if a != "-H" else "-H", args[i + 1]]
            i += 1
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
    base = [BUF, "curl", "--protocol", "grpc", "--reflect-protocol", "grpc-v1alpha"]
    if plaintext:
        base.insert(4, "--http2-prior-knowledge")
    scheme = "http" if plaintext else "https"
    if max_time:
        base = [BUF, "--timeout", f"{max_time}s"] + base[1:]
    if rest and rest[0] in ("list", "describe"):
        # buf curl has no describe: the symbol's methods must be listed through
        # reflection, which is what grpcurl describe needs too.
        symbol = rest[1] if len(rest) > 1 else None
        flag = "--list-methods" if symbol else "--list-services"
        return base + flags + [flag, f"{scheme}://{target}"], False, symbol
    if len(rest) != 1:
        raise SystemExit(f"cannot translate README example: {command}")
    argv = base + flags + (["-d", data] if data is not None else []) + [f"{scheme}://{target}/{rest[0]}"]
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
        readme = f.read()
    quick_ran, quick_failed = run_quick_start(readme)
    secure_ran, secure_failed = run_secure_section(readme) if not quick_failed else (0, 0)
    ran, failed = quick_ran + secure_ran, quick_failed + secure_failed
    print(f"examples: {ran - failed} passed, {failed} failed")
    return 1 if failed or not quick_ran or not secure_ran else 0


def run_quick_start(readme: str) -> tuple[int, int]:
    """The quick-start examples; returns (ran, failed)."""
    commands = example_commands(readme)
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
    print(f"quick start: {ran - failures} passed, {failures} failed")
    return ran, failures


# === "Securing the gateway" ===

SECURE_START = "<!-- examples:secure:start -->"
SECURE_END = "<!-- examples:secure:end -->"
VENV = os.path.join(ROOT, ".venv-clients")
NODE_DIR = os.path.join(ROOT, "tests", "clients", "node")


def secure_blocks(readme: str) -> list[tuple[str, str]]:
    """(language, text) of the fenced blocks of the secure section, in order."""
    section = readme[readme.index(SECURE_START) : readme.index(SECURE_END)]
    return re.findall(r"```(sh|python|js)\n(.*?)```", section, re.S)


def shell_commands(block: str) -> list[tuple[str, str]]:
    """(command, comment above it) of a sh block: continuation lines joined, a
    heredoc kept whole with its command."""
    commands, comment = [], []
    lines = block.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i].rstrip()
        stripped = line.strip()
        if stripped.startswith("#"):
            comment.append(stripped.lstrip("# "))
            i += 1
            continue
        if not stripped:
            comment = []
            i += 1
            continue
        command = line
        while command.endswith("\\") and i + 1 < len(lines):
            i += 1
            command = command[:-1] + " " + lines[i].strip()
        heredoc = re.search(r"<<-?\s*'?(\w+)'?", command)
        if heredoc:
            end = heredoc.group(1)
            body = []
            while i + 1 < len(lines) and lines[i + 1].strip() != end:
                i += 1
                body.append(lines[i])
            i += 1
            command = "\n".join([command, *body, end])
        commands.append((command, " ".join(comment)))
        comment = []
        i += 1
    return commands


def ensure_python_clients() -> str:
    """.venv-clients, as scripts/check-clients.sh makes it; returns its python."""
    requirements = os.path.join(ROOT, "tests", "clients", "requirements.txt")
    with open(requirements, "rb") as f:
        digest = hashlib.sha256(f.read()).hexdigest()
    stamp = os.path.join(VENV, ".requirements.sha256")
    python = os.path.join(VENV, "bin", "python")
    current = open(stamp).read().strip() if os.path.exists(stamp) else ""
    if not os.path.exists(python) or current != digest:
        print("installing the Python gRPC clients into .venv-clients/")
        subprocess.run(["rm", "-rf", VENV], check=True)
        subprocess.run([sys.executable, "-m", "venv", VENV], check=True)
        subprocess.run([os.path.join(VENV, "bin", "pip"), "install", "--quiet", "--disable-pip-version-check", "-r", requirements], check=True)
        with open(stamp, "w") as f:
            f.write(digest + "\n")
    return python


def ensure_node_clients() -> str:
    """tests/clients/node/node_modules, as scripts/check-node-client.sh makes it."""
    with open(os.path.join(NODE_DIR, "package-lock.json"), "rb") as f:
        digest = hashlib.sha256(f.read()).hexdigest()
    modules = os.path.join(NODE_DIR, "node_modules")
    stamp = os.path.join(modules, ".lock.sha256")
    current = open(stamp).read().strip() if os.path.exists(stamp) else ""
    if current != digest:
        print("installing the Node gRPC clients into tests/clients/node/node_modules (npm ci)")
        subprocess.run(["npm", "ci", "--no-audit", "--no-fund", "--loglevel=error"], cwd=NODE_DIR, check=True)
        with open(stamp, "w") as f:
            f.write(digest + "\n")
    return modules


GRPCURL_SHIM = """#!/usr/bin/env python3
# grpcurl for the README check: the same call through buf curl (check_examples.py),
# exiting as grpcurl would (64 + the gRPC status code).
import shlex, subprocess, sys
sys.path.insert(0, {readme_dir!r})
from check_examples import grpcurl_to_buf, BUF_STATUS_FACTOR, GRPCURL_STATUS_OFFSET
argv, _, _ = grpcurl_to_buf("grpcurl " + shlex.join(sys.argv[1:]))
code = subprocess.run(argv).returncode
if code and code % BUF_STATUS_FACTOR == 0 and code // BUF_STATUS_FACTOR < 17:
    code = GRPCURL_STATUS_OFFSET + code // BUF_STATUS_FACTOR
sys.exit(code)
"""


def run_secure_section(readme: str) -> tuple[int, int]:
    """The secure section's examples, as one bash script; returns (ran, failed)."""
    import tempfile

    python = ensure_python_clients()
    node_modules = ensure_node_clients()
    work = tempfile.mkdtemp(prefix="readme-secure-")
    logs = os.path.join(work, ".logs")
    shims = os.path.join(work, ".bin")
    os.makedirs(logs)
    os.makedirs(shims)
    shim = os.path.join(shims, "grpcurl")
    with open(shim, "w") as f:
        f.write(GRPCURL_SHIM.format(readme_dir=os.path.dirname(os.path.abspath(__file__))))
    os.chmod(shim, 0o755)
    os.symlink(os.path.join(ROOT, "proto"), os.path.join(work, "proto"))
    # As the README's Python section generates them.
    protos = sorted(
        os.path.relpath(os.path.join(d, n), os.path.join(ROOT, "proto"))
        for d, _, names in os.walk(os.path.join(ROOT, "proto"))
        for n in names
        if n.endswith(".proto")
    )
    os.makedirs(os.path.join(work, "gen"))
    subprocess.run([python, "-m", "grpc_tools.protoc", "-I", "proto", "--python_out=gen", "--grpc_python_out=gen", *protos], cwd=work, check=True)

    steps: list[tuple[str, str, int]] = []  # (shown text, script lines, expected exit)
    serve_seen = 0
    for n, (language, text) in enumerate(secure_blocks(readme)):
        if language == "python":
            path = os.path.join(work, f"example-{n}.py")
            open(path, "w").write(text)
            steps.append((f"python example-{n}.py", f'"{python}" {shlex.quote(path)}', 0))
            continue
        if language == "js":
            path = os.path.join(work, f"example-{n}.cjs")
            open(path, "w").write(text)
            steps.append((f"node example-{n}.cjs", f"node {shlex.quote(path)}", 0))
            continue
        for command, comment in shell_commands(text):
            if "serve --sandbox" in command:
                serve_seen += 1
                args = command.split(" -- ", 1)[1]
                script = (
                    f'"{BINARY}" {args} > {logs}/gateway.log 2>&1 &\n'
                    f"echo $! > {logs}/gateway.pid\n"
                    f"for port in 50051 8080 8090; do\n"
                    f"  for _ in $(seq 300); do (echo > /dev/tcp/127.0.0.1/$port) 2>/dev/null && break; sleep 0.1; done\n"
                    f"done"
                )
                steps.append((command, script, 0))
                continue
            status = expected_grpc_status(comment)
            steps.append((command, command, GRPCURL_STATUS_OFFSET + status if status else 0))
    if serve_seen != 1:
        raise SystemExit("the secure examples must start the gateway with exactly one `serve --sandbox` command")

    script = ["set -u", f'export PATH="{shims}:$PATH"', f'export PYTHONPATH="{work}/gen"', f'export NODE_PATH="{node_modules}"', f'cd "{work}"']
    for i, (_, body, _) in enumerate(steps):
        script += [f"{{ {body}", f"}} > {logs}/{i}.out 2>&1 < /dev/null", f"echo $? > {logs}/{i}.rc"]
    script_path = os.path.join(work, ".examples.sh")
    open(script_path, "w").write("\n".join(script) + "\n")
    failures = 0
    try:
        subprocess.run(["bash", script_path], timeout=600)
    finally:
        pid_file = os.path.join(logs, "gateway.pid")
        if os.path.exists(pid_file):
            pid = int(open(pid_file).read().strip())
            try:
                os.kill(pid, signal.SIGTERM)
                for _ in range(300):
                    os.kill(pid, 0)
                    time.sleep(0.1)
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    for i, (shown, _, expected) in enumerate(steps):
        rc_path = os.path.join(logs, f"{i}.rc")
        rc = int(open(rc_path).read()) if os.path.exists(rc_path) else None
        output = open(os.path.join(logs, f"{i}.out")).read() if os.path.exists(os.path.join(logs, f"{i}.out")) else ""
        ok = rc == expected and (expected == 0 or "google.rpc.ErrorInfo" in output)
        print(f"[{'ok' if ok else 'FAILED'}] {shown.splitlines()[0][:110]}")
        if not ok:
            failures += 1
            print(f"exit {rc}, expected {expected}", output[-2000:], sep="\n")
    if failures:
        print(open(os.path.join(logs, "gateway.log")).read()[-3000:] if os.path.exists(os.path.join(logs, "gateway.log")) else "")
    print(f"securing: {len(steps) - failures} passed, {failures} failed")
    return len(steps), failures


if __name__ == "__main__":
    sys.exit(main())
