// A secured gateway from grpc-js: TLS with a client certificate naming a SPIFFE id,
// a bearer token from a metadata generator, and the policy's refusals with their
// google.rpc details. Certificates are made with openssl (the test command installs it).
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, before, test } from 'node:test';

import grpc from '@grpc/grpc-js';

import { errorDetails, loadApi, unary } from '../client.mjs';
import { Gateway } from '../gateway.mjs';

const FULFILLER = 'spiffe://cluster.local/ns/shipping/sa/fulfiller';
const READER = 'spiffe://cluster.local/ns/reports/sa/reader';
const CAPTURE = '/digitalriver.gateway.v1.ChargeService/CaptureItems';
// why: the server certificate names localhost; the gateway listens on 127.0.0.1.
const TLS_OPTIONS = { 'grpc.ssl_target_name_override': 'localhost' };

const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'dr-gateway-node-pki-'));
const openssl = (...args) => execFileSync('openssl', args, { cwd: dir, stdio: 'pipe' });
const read = (name) => fs.readFileSync(path.join(dir, name));

function makeCa(name) {
  openssl('req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes', '-days', '1',
    '-subj', `/CN=${name}`, '-keyout', `${name}.key`, '-out', `${name}.crt`);
}

function issue(ca, name, san, usage) {
  openssl('req', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes', '-subj', `/CN=${name}`,
    '-keyout', `${name}.key`, '-out', `${name}.csr`);
  fs.writeFileSync(path.join(dir, `${name}.ext`), `subjectAltName=${san}\nextendedKeyUsage=${usage}\n`);
  openssl('x509', '-req', '-in', `${name}.csr`, '-CA', `${ca}.crt`, '-CAkey', `${ca}.key`, '-CAcreateserial',
    '-days', '1', '-extfile', `${name}.ext`, '-out', `${name}.crt`);
}

const token = randomBytes(32).toString('hex');
const api = loadApi();
const ctx = {};

before(async () => {
  makeCa('ca');
  makeCa('other-ca');
  issue('ca', 'server', 'DNS:localhost,IP:127.0.0.1', 'serverAuth');
  issue('ca', 'fulfiller', `URI:${FULFILLER}`, 'clientAuth');
  issue('ca', 'reader', `URI:${READER}`, 'clientAuth');
  issue('other-ca', 'stranger', `URI:${FULFILLER}`, 'clientAuth');
  const digest = createHash('sha256').update(token).digest('hex');
  fs.writeFileSync(path.join(dir, 'tokens.txt'), `reports sha256:${digest}\n`);
  fs.writeFileSync(path.join(dir, 'policy.toml'), [
    '[[rules]]', 'name = "shipping"', `identities = ["${FULFILLER}"]`, 'allow = ["read", "capture"]', '',
    '[[rules]]', 'name = "reports"', `identities = ["${READER}", "token:reports"]`, 'allow = ["read"]', '',
  ].join('\n'));
  ctx.gateway = await Gateway.start([
    '--tls-cert-file', path.join(dir, 'server.crt'), '--tls-key-file', path.join(dir, 'server.key'),
    '--tls-client-ca-file', path.join(dir, 'ca.crt'), '--tls-client-auth', 'optional',
    '--auth-tokens-file', path.join(dir, 'tokens.txt'), '--auth-policy-file', path.join(dir, 'policy.toml'),
    '--auth-required',
  ], { plaintextHealth: true });
});

after(async () => {
  if (ctx.gateway) {
    const { code } = await ctx.gateway.stop();
    assert.equal(code, 0, ctx.gateway.logTail());
  }
  fs.rmSync(dir, { recursive: true, force: true });
});

/** A ChargeService client over TLS trusting `ca`, presenting `client`'s certificate if given. */
function charges({ client, ca = 'ca', bearer } = {}) {
  let credentials = client
    ? grpc.credentials.createSsl(read(`${ca}.crt`), read(`${client}.key`), read(`${client}.crt`))
    : grpc.credentials.createSsl(read(`${ca}.crt`));
  if (bearer) {
    credentials = grpc.credentials.combineChannelCredentials(credentials, grpc.credentials.createFromMetadataGenerator((_p, callback) => {
      const metadata = new grpc.Metadata();
      metadata.set('authorization', `Bearer ${bearer}`);
      callback(null, metadata);
    }));
  }
  const client_ = new api.ChargeService(ctx.gateway.target, credentials, TLS_OPTIONS);
  ctx.clients = [...(ctx.clients ?? []), client_];
  return client_;
}

after(() => ctx.clients?.forEach((c) => c.close()));

function capture(order, requestId) {
  return { order_id: order.id, items: [{ item_id: order.items[0].id, quantity: 1 }], request_id: requestId };
}

test('plaintext and a certificate from another CA are refused before any method runs', async () => {
  const plaintext = new api.ChargeService(ctx.gateway.target, grpc.credentials.createInsecure());
  ctx.clients = [...(ctx.clients ?? []), plaintext];
  await assert.rejects(unary(plaintext, 'ListOrderCharges', { order_id: '1' }, { timeoutMs: 5_000 }),
    (err) => err.code === grpc.status.UNAVAILABLE);
  await assert.rejects(unary(charges({ client: 'stranger' }), 'ListOrderCharges', { order_id: '1' }, { timeoutMs: 5_000 }),
    (err) => err.code === grpc.status.UNAVAILABLE);
});

test('the fulfiller\'s certificate may capture and DR\'s fulfillment names it as the caller', async () => {
  const order = await ctx.gateway.sandbox.createOrder([{ quantity: 2, amount: '10.00' }]);

  const reply = await unary(charges({ client: 'fulfiller' }), 'CaptureItems', capture(order, `node-ship-${order.id}`));

  const held = await ctx.gateway.sandbox.fulfillmentsOf(order.id);
  assert.deepEqual(held.map((f) => f.id), [reply.fulfillment.id]);
  assert.equal(held[0].metadata.caller, FULFILLER);
});

test('a reader may read, and capturing is PERMISSION_DENIED with ErrorInfo naming the method', async () => {
  const order = await ctx.gateway.sandbox.createOrder([{ quantity: 1, amount: '10.00' }]);
  const reader = charges({ client: 'reader' });

  assert.equal((await unary(reader, 'ListOrderCharges', { order_id: order.id })).order_id, order.id);
  await assert.rejects(unary(reader, 'CaptureItems', capture(order, `node-read-${order.id}`)), (err) => {
    assert.equal(err.code, grpc.status.PERMISSION_DENIED);
    const info = errorDetails(err).find((d) => d['@type'] === 'google.rpc.ErrorInfo');
    assert.equal(info.reason, 'METHOD_NOT_ALLOWED');
    assert.equal(info.metadata.method, CAPTURE);
    return true;
  });
  assert.deepEqual(await ctx.gateway.sandbox.fulfillmentsOf(order.id), []);
});

test('a bearer token names its caller; a wrong or missing one is UNAUTHENTICATED', async () => {
  const order = await ctx.gateway.sandbox.createOrder([{ quantity: 1, amount: '10.00' }]);

  assert.equal((await unary(charges({ bearer: token }), 'ListOrderCharges', { order_id: order.id })).order_id, order.id);
  for (const [client, reason] of [[charges({ bearer: 'guess' }), 'INVALID_TOKEN'], [charges(), 'CREDENTIALS_REQUIRED']]) {
    await assert.rejects(unary(client, 'ListOrderCharges', { order_id: order.id }), (err) => {
      assert.equal(err.code, grpc.status.UNAUTHENTICATED);
      assert.equal(errorDetails(err).find((d) => d['@type'] === 'google.rpc.ErrorInfo').reason, reason);
      assert.ok(!err.details.includes(token));
      return true;
    });
  }
});
