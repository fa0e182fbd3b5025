// Deadlines a Node client sets are honoured: the gateway gives up on a slow DR call and
// answers DEADLINE_EXCEEDED itself (with its ErrorInfo) before the client's own timer
// fires, and a Subscribe stream ends with DEADLINE_EXCEEDED at its deadline (what
// grpcurl -max-time reports as exit code 68 = 64 + 4).
import assert from 'node:assert/strict';
import { test } from 'node:test';

import grpc from '@grpc/grpc-js';

import { errorDetails, unary } from '../client.mjs';
import { useGateway } from '../harness.mjs';

const ctx = useGateway();

test('a call whose DR request outlives the deadline gets DEADLINE_EXCEEDED from the gateway, with ErrorInfo', async () => {
  // Arrange: DR takes 5 s to answer the next GET /charges/chg_slow.
  await ctx.sandbox.fault({ method: 'GET', path: '/charges/chg_slow', count: 1, kind: 'latency', latencyMs: 5_000 });
  const started = Date.now();
  let err;
  try {
    // Act
    err = await unary(ctx.charges, 'GetCharge', { charge_id: 'chg_slow' }, { timeoutMs: 1_500 }).then(
      () => assert.fail('the call succeeded'),
      (e) => e,
    );
  } finally {
    await ctx.sandbox.clearFaults();
  }

  // Assert: the gateway's own answer (a client-side timeout carries no details).
  assert.equal(err.code, grpc.status.DEADLINE_EXCEEDED);
  const info = errorDetails(err).find((d) => d['@type'] === 'google.rpc.ErrorInfo');
  assert.ok(info, `the gateway answered before the client gave up: ${err.details}`);
  assert.equal(info.domain, 'digitalriver.com');
  assert.ok(Date.now() - started < 5_000, 'not after DR finally answered');
});

test('a Subscribe stream ends with DEADLINE_EXCEEDED at its deadline', async () => {
  const call = ctx.events.Subscribe(
    { filter: { types: ['order.charge.*'] }, position: 'START_POSITION_NOW', heartbeat_interval: { seconds: 1, nanos: 0 } },
    { deadline: Date.now() + 1_500 },
  );
  let heartbeats = 0;
  call.on('data', (m) => { if (m.kind === 'heartbeat') heartbeats += 1; });

  const err = await new Promise((resolve) => {
    call.on('error', resolve);
    call.on('end', () => resolve(null));
  });

  assert.equal(err?.code, grpc.status.DEADLINE_EXCEEDED);
  assert.ok(heartbeats >= 1, 'the stream was open (heartbeats) until its deadline');
});
