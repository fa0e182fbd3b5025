// Deadlines a Node client sets are honoured: a call whose DR request is slower than
// the deadline ends with DEADLINE_EXCEEDED at the deadline, not when DR finally
// answers; the gateway's own cap on a DR call answers with its ErrorInfo well before
// a longer deadline; and a Subscribe stream ends with DEADLINE_EXCEEDED at its
// deadline (what grpcurl -max-time reports as exit code 68 = 64 + 4).
import assert from 'node:assert/strict';
import { test } from 'node:test';

import grpc from '@grpc/grpc-js';

import { errorDetails, unary } from '../client.mjs';
import { useGateway } from '../harness.mjs';

// why: a cap on each DR call far below the deadlines used here, so the gateway's own
// answer cannot race the client's timer.
const UPSTREAM_TIMEOUT_MS = 1_000;
const ctx = useGateway({ args: ['--upstream-timeout', `${UPSTREAM_TIMEOUT_MS}ms`] });
const DR_LATENCY_MS = 6_000;

/** GetCharge of `chargeId` while DR takes DR_LATENCY_MS to answer it; resolves to
 * { err, tookMs }. */
async function slowGetCharge(chargeId, timeoutMs) {
  await ctx.sandbox.fault({ method: 'GET', path: `/charges/${chargeId}`, count: 1, kind: 'latency', latencyMs: DR_LATENCY_MS });
  const started = Date.now();
  try {
    const err = await unary(ctx.charges, 'GetCharge', { charge_id: chargeId }, { timeoutMs }).then(
      () => assert.fail('the call succeeded'),
      (e) => e,
    );
    return { err, tookMs: Date.now() - started };
  } finally {
    await ctx.sandbox.clearFaults();
  }
}

test('a call whose DR request outlives the caller\'s deadline ends DEADLINE_EXCEEDED at the deadline', async () => {
  const { err, tookMs } = await slowGetCharge('chg_slow_for_the_deadline', 500);

  assert.equal(err.code, grpc.status.DEADLINE_EXCEEDED);
  assert.ok(tookMs < DR_LATENCY_MS / 2, `answered after ${tookMs} ms, not when DR did`);
  // Either side's timer may fire first (the gateway keeps back only a few ms); an
  // answer from the gateway carries its ErrorInfo.
  const info = errorDetails(err).find((d) => d['@type'] === 'google.rpc.ErrorInfo');
  if (info) assert.equal(info.domain, 'digitalriver.com');
});

test('the gateway\'s cap on a DR call answers DEADLINE_EXCEEDED with ErrorInfo UPSTREAM_TIMEOUT before a longer deadline', async () => {
  const { err, tookMs } = await slowGetCharge('chg_slow_for_the_cap', 5_000);

  assert.equal(err.code, grpc.status.DEADLINE_EXCEEDED);
  const info = errorDetails(err).find((d) => d['@type'] === 'google.rpc.ErrorInfo');
  assert.ok(info, `the gateway answered, not the client's timer: ${err.details}`);
  assert.equal(info.reason, 'UPSTREAM_TIMEOUT');
  assert.equal(info.domain, 'digitalriver.com');
  assert.ok(tookMs < 5_000, `answered after ${tookMs} ms`);
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
