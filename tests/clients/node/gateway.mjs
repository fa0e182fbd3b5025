// A real `dr-gateway serve --sandbox` child process on free loopback ports, the
// sandbox's HTTP control surface (DR's API and /sandbox/), and waits with deadlines.
import { spawn } from 'node:child_process';
import { randomUUID } from 'node:crypto';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { createRequire } from 'node:module';

import grpc from '@grpc/grpc-js';
import protoLoader from '@grpc/proto-loader';

import { LOADER_OPTIONS, ROOT } from './client.mjs';

const BINARY = process.env.DR_GATEWAY_BINARY ?? path.join(ROOT, 'target', 'debug', 'dr-gateway');
// Any bearer key works on the sandbox; sk_test_ keys make test-mode objects.
const SANDBOX_KEY = 'sk_test_node_clients';
const STARTUP_DEADLINE_MS = 60_000;
const SHUTDOWN_GRACE_S = 10;

const require = createRequire(import.meta.url);
const HEALTH_PROTO = path.join(path.dirname(require.resolve('grpc-health-check/package.json')), 'proto/health/v1/health.proto');
const { Health } = grpc.loadPackageDefinition(protoLoader.loadSync(HEALTH_PROTO, LOADER_OPTIONS)).grpc.health.v1;

/** Ports the kernel picked as free (bound to port 0 together, then released). */
async function freePorts(count) {
  const servers = await Promise.all(
    Array.from({ length: count }, () => new Promise((resolve, reject) => {
      const server = net.createServer();
      server.once('error', reject);
      server.listen(0, '127.0.0.1', () => resolve(server));
    })),
  );
  const ports = servers.map((s) => s.address().port);
  await Promise.all(servers.map((s) => new Promise((resolve) => s.close(resolve))));
  return ports;
}

/** Polls `check` until it returns a truthy value; fails with `what` after `timeoutMs`. */
export async function eventually(what, check, { timeoutMs = 10_000, everyMs = 20 } = {}) {
  const deadline = Date.now() + timeoutMs;
  let lastError;
  for (;;) {
    try {
      const value = await check();
      if (value) return value;
    } catch (err) {
      lastError = err;
    }
    if (Date.now() > deadline) {
      throw new Error(`${what} did not happen within ${timeoutMs} ms${lastError ? `: ${lastError.message}` : ''}`);
    }
    await new Promise((resolve) => setTimeout(resolve, everyMs));
  }
}

/** The sandbox's HTTP surface: DR's API and the `/sandbox/` controls. */
export class Sandbox {
  constructor(baseUrl) {
    this.baseUrl = baseUrl;
  }

  async call(method, pathAndQuery, body, expect = [200, 201, 202, 204]) {
    const response = await fetch(this.baseUrl + pathAndQuery, {
      method,
      headers: {
        Authorization: `Bearer ${SANDBOX_KEY}`,
        ...(body === undefined ? {} : { 'Content-Type': 'application/json' }),
      },
      body: body === undefined ? undefined : JSON.stringify(body),
      signal: AbortSignal.timeout(10_000),
    });
    const text = await response.text();
    if (!expect.includes(response.status)) {
      throw new Error(`sandbox ${method} ${pathAndQuery} answered ${response.status}: ${text.slice(0, 500)}`);
    }
    return text ? JSON.parse(text) : null;
  }

  /** `POST /sandbox/orders` with a unique upstream id; returns DR's order JSON. */
  createOrder(items, spec = {}) {
    return this.call('POST', '/sandbox/orders', { upstreamId: `node-${randomUUID().slice(0, 12)}`, ...spec, items }, [201]);
  }

  /** The fulfillments DR holds for an order (`GET /fulfillments?orderId=`). */
  async fulfillmentsOf(orderId) {
    return (await this.call('GET', `/fulfillments?orderId=${encodeURIComponent(orderId)}`)).data;
  }

  /** The DR requests the sandbox received (`GET /sandbox/requests`). */
  async requests(method, requestPath) {
    const query = new URLSearchParams({ method, path: requestPath });
    return (await this.call('GET', `/sandbox/requests?${query}`)).data;
  }

  /** Arms one fault (`POST /sandbox/faults`), e.g. a 429 or latency. */
  fault(spec) {
    return this.call('POST', '/sandbox/faults', spec, [201]);
  }

  clearFaults() {
    return this.call('DELETE', '/sandbox/faults');
  }
}

/** One `dr-gateway serve --sandbox` child process on free loopback ports. */
export class Gateway {
  /** Starts one; `extraArgs` are more `serve` flags (e.g. `--upstream-timeout 1s`).
   * `plaintextHealth`: also serve health alone in plaintext (`--grpc-health-addr`),
   * which start-up then polls (for a gateway whose API port speaks TLS). */
  static async start(extraArgs = [], { plaintextHealth = false } = {}) {
    if (!fs.existsSync(BINARY)) {
      throw new Error(`${BINARY} is missing: run bash scripts/check-node-client.sh (it builds it)`);
    }
    const [grpcPort, httpPort, sandboxPort, healthPort] = await freePorts(4);
    const gateway = new Gateway(`127.0.0.1:${grpcPort}`, `http://127.0.0.1:${sandboxPort}`);
    gateway.healthTarget = plaintextHealth ? `127.0.0.1:${healthPort}` : gateway.target;
    const logPath = path.join(fs.mkdtempSync(path.join(os.tmpdir(), 'dr-gateway-node-')), 'dr-gateway.log');
    const log = fs.openSync(logPath, 'w');
    // why: a DR_GATEWAY_* variable in the caller's shell would change the flags' defaults.
    const env = Object.fromEntries(Object.entries(process.env).filter(([k]) => !k.startsWith('DR_GATEWAY_')));
    gateway.logPath = logPath;
    gateway.process = spawn(
      BINARY,
      [
        'serve', '--sandbox',
        '--grpc-addr', gateway.target,
        '--http-addr', `127.0.0.1:${httpPort}`,
        '--sandbox-addr', `127.0.0.1:${sandboxPort}`,
        '--shutdown-grace', `${SHUTDOWN_GRACE_S}s`,
        ...(plaintextHealth ? ['--grpc-health-addr', gateway.healthTarget] : []),
        ...extraArgs,
      ],
      { stdio: ['ignore', log, log], env: { RUST_LOG: 'info', ...env } },
    );
    fs.closeSync(log);
    gateway.exited = new Promise((resolve) => gateway.process.once('exit', (code, signal) => resolve({ code, signal })));
    try {
      await gateway.#waitUntilReady();
    } catch (err) {
      gateway.process.kill('SIGKILL');
      throw new Error(`${err.message}\n${gateway.logTail()}`);
    }
    return gateway;
  }

  constructor(target, sandboxUrl) {
    this.target = target;
    this.sandbox = new Sandbox(sandboxUrl);
  }

  /** Health says SERVING and the sandbox's webhooks point at the gateway. */
  async #waitUntilReady() {
    const health = new Health(this.healthTarget, grpc.credentials.createInsecure());
    try {
      await eventually('gRPC health SERVING', () => {
        if (this.process.exitCode !== null) throw new Error(`dr-gateway exited with ${this.process.exitCode}`);
        return new Promise((resolve) => {
          health.Check({ service: '' }, { deadline: Date.now() + 500 }, (err, reply) => resolve(!err && reply.status === 'SERVING'));
        });
      }, { timeoutMs: STARTUP_DEADLINE_MS });
    } finally {
      health.close();
    }
    // why: an order created before the gateway's webhook is registered would have its
    // events sent nowhere.
    await eventually('the sandbox webhook registration', async () => (await this.sandbox.call('GET', '/sandbox/webhooks')).data.length > 0);
  }

  /** SIGTERM, then the exit; resolves to { code, signal, tookMs }. */
  async stop() {
    const started = Date.now();
    if (this.process.exitCode === null && this.process.signalCode === null) this.process.kill('SIGTERM');
    const timer = setTimeout(() => this.process.kill('SIGKILL'), (SHUTDOWN_GRACE_S + 5) * 1000);
    const exit = await this.exited;
    clearTimeout(timer);
    return { ...exit, tookMs: Date.now() - started };
  }

  logTail(lines = 40) {
    try {
      return fs.readFileSync(this.logPath, 'utf8').split('\n').slice(-lines).join('\n');
    } catch {
      return '';
    }
  }
}
