// Node's gRPC stack (@grpc/grpc-js) against a real `dr-gateway serve --sandbox`:
// requests compressed with gzip and deflate are accepted, and the compressed
// responses the gateway sends back (grpc-js offers gzip and deflate) are read.
//
// grpc-js implements no zstd (its compression filter knows identity, deflate and
// gzip only), so zstd is proven with a tonic client in
// crates/dr-gateway/tests/api/transport.rs.
//
// Run by scripts/check-node-compression.sh, which builds the gateway and installs
// this directory's locked dependencies.

import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import { createServer } from 'node:net';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

import grpc from '@grpc/grpc-js';
import protoLoader from '@grpc/proto-loader';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..', '..');
const BINARY = path.join(ROOT, 'target', 'debug', 'dr-gateway');
const SANDBOX_KEY = 'sk_test_node_clients';
const DEADLINE_MS = 60_000;

// grpc-js's `grpc.default_compression_algorithm` values.
const ALGORITHMS = { deflate: 1, gzip: 2 };

const definition = protoLoader.loadSync(
  ['digitalriver/gateway/v1/fulfillment_service.proto'],
  { includeDirs: [path.join(ROOT, 'proto')], keepCase: true, longs: String, enums: String, defaults: true },
);
const { FulfillmentService } = grpc.loadPackageDefinition(definition).digitalriver.gateway.v1;

/** A port the kernel picked as free. */
function freePort() {
  return new Promise((resolve, reject) => {
    const server = createServer();
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => {
      const { port } = server.address();
      server.close(() => resolve(port));
    });
  });
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

let gateway;
let grpcTarget;
let sandboxUrl;
let log = '';

before(async () => {
  const [grpcPort, httpPort, sandboxPort] = [await freePort(), await freePort(), await freePort()];
  grpcTarget = `127.0.0.1:${grpcPort}`;
  sandboxUrl = `http://127.0.0.1:${sandboxPort}`;
  const env = Object.fromEntries(Object.entries(process.env).filter(([k]) => !k.startsWith('DR_GATEWAY_')));
  gateway = spawn(BINARY, [
    'serve', '--sandbox',
    '--grpc-addr', grpcTarget,
    '--http-addr', `127.0.0.1:${httpPort}`,
    '--sandbox-addr', `127.0.0.1:${sandboxPort}`,
  ], { env: { ...env, RUST_LOG: 'info' }, stdio: ['ignore', 'pipe', 'pipe'] });
  gateway.stdout.on('data', (chunk) => { log += chunk; });
  gateway.stderr.on('data', (chunk) => { log += chunk; });
  // Wait (with a deadline) until the gateway's own health check says SERVING.
  const deadline = Date.now() + DEADLINE_MS;
  for (;;) {
    assert.equal(gateway.exitCode, null, `dr-gateway exited during start-up:\n${log}`);
    const check = spawnSync(BINARY, ['health-check', '--addr', grpcTarget], { stdio: 'ignore' });
    if (check.status === 0) break;
    assert.ok(Date.now() < deadline, `dr-gateway never served:\n${log}`);
    await sleep(50);
  }
});

after(() => {
  gateway?.kill('SIGTERM');
});

/** POST /sandbox/orders; returns the order as DR shows it. */
async function createOrder(upstreamId) {
  const response = await fetch(`${sandboxUrl}/sandbox/orders`, {
    method: 'POST',
    headers: { authorization: `Bearer ${SANDBOX_KEY}`, 'content-type': 'application/json' },
    body: JSON.stringify({ upstreamId, items: [{ quantity: 1, amount: '12.50' }] }),
  });
  const body = await response.text();
  assert.equal(response.status, 201, body);
  return JSON.parse(body);
}

/** The DR requests the sandbox received for `pathGlob`. */
async function drRequests(method, pathGlob) {
  const query = new URLSearchParams({ method, path: pathGlob });
  const response = await fetch(`${sandboxUrl}/sandbox/requests?${query}`, {
    headers: { authorization: `Bearer ${SANDBOX_KEY}` },
  });
  return (await response.json()).data;
}

function getOrder(client, request) {
  return new Promise((resolve, reject) => {
    client.GetOrder(request, { deadline: Date.now() + 10_000 }, (error, reply) => (error ? reject(error) : resolve(reply)));
  });
}

for (const [name, algorithm] of Object.entries(ALGORITHMS)) {
  test(`a ${name}-compressed request is accepted and its compressed answer read`, async () => {
    // grpc-js compresses every message it sends on this channel; the first call
    // goes before it has seen the gateway's grpc-accept-encoding, the second after.
    const client = new FulfillmentService(grpcTarget, grpc.credentials.createInsecure(), {
      'grpc.default_compression_algorithm': algorithm,
    });
    try {
      // A long, compressible upstream id: the gateway must inflate it exactly to
      // pass it on to DR.
      const upstreamId = `node-${name}-${'x'.repeat(2000)}`;
      const order = await createOrder(upstreamId);
      for (let call = 0; call < 2; call += 1) {
        const reply = await getOrder(client, { upstream_id: upstreamId });
        assert.equal(reply.order.id, order.id);
        assert.equal(reply.order.upstream_id, upstreamId);
      }
      const lookups = (await drRequests('GET', '/orders')).filter((r) => (r.query ?? '').includes(`node-${name}-`));
      assert.equal(lookups.length, 2, 'both calls reached DR with the whole id');
    } finally {
      client.close();
    }
  });
}
