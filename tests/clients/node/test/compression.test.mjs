// Requests compressed with gzip and deflate from Node's gRPC stack (@grpc/grpc-js)
// are accepted, and the compressed responses the gateway sends back (grpc-js offers
// gzip and deflate) are read.
//
// grpc-js implements no zstd (its compression filter knows identity, deflate and
// gzip only), so zstd is proven with a tonic client in
// crates/dr-gateway/tests/api/transport.rs.
import assert from 'node:assert/strict';
import { test } from 'node:test';

import grpc from '@grpc/grpc-js';

import { loadApi, unary } from '../client.mjs';
import { useGateway } from '../harness.mjs';

const ctx = useGateway();
const api = loadApi();

// grpc-js's `grpc.default_compression_algorithm` values.
const ALGORITHMS = { deflate: 1, gzip: 2 };

for (const [name, algorithm] of Object.entries(ALGORITHMS)) {
  test(`a ${name}-compressed request is accepted and its compressed answer read`, async () => {
    // grpc-js compresses every message it sends on this channel; the first call
    // goes before it has seen the gateway's grpc-accept-encoding, the second after.
    const client = new api.FulfillmentService(ctx.gateway.target, grpc.credentials.createInsecure(), {
      'grpc.default_compression_algorithm': algorithm,
    });
    try {
      // A long, compressible upstream id (within the 255 bytes the gateway accepts
      // for a filter text): the gateway must inflate it exactly to
      // pass it on to DR.
      const upstreamId = `node-${name}-${'x'.repeat(240)}`;
      const order = await ctx.sandbox.createOrder([{ quantity: 1, amount: '12.50' }], { upstreamId });
      for (let call = 0; call < 2; call += 1) {
        const reply = await unary(client, 'GetOrder', { upstream_id: upstreamId });
        assert.equal(reply.order.id, order.id);
        assert.equal(reply.order.upstream_id, upstreamId);
      }
      const lookups = (await ctx.sandbox.requests('GET', '/orders')).filter((r) => (r.query ?? '').includes(`node-${name}-`));
      assert.equal(lookups.length, 2, 'both calls reached DR with the whole id');
    } finally {
      client.close();
    }
  });
}
