// One gateway per test file: started before its tests, and at the end it must drain
// and exit 0 on SIGTERM well within its grace period.
import assert from 'node:assert/strict';
import { after, before } from 'node:test';

import grpc from '@grpc/grpc-js';

import { loadApi } from './client.mjs';
import { Gateway } from './gateway.mjs';

const api = loadApi();

/** Registers the file's gateway (`args`: more `serve` flags); its fields are set once
 * `before` ran. */
export function useGateway({ args = [] } = {}) {
  const ctx = {};
  before(async () => {
    ctx.gateway = await Gateway.start(args);
    ctx.sandbox = ctx.gateway.sandbox;
    const credentials = grpc.credentials.createInsecure();
    ctx.fulfillments = new api.FulfillmentService(ctx.gateway.target, credentials);
    ctx.charges = new api.ChargeService(ctx.gateway.target, credentials);
    ctx.events = new api.EventStream(ctx.gateway.target, credentials);
  });
  after(async () => {
    for (const client of [ctx.fulfillments, ctx.charges, ctx.events]) client?.close();
    if (!ctx.gateway) return;
    const { code, tookMs } = await ctx.gateway.stop();
    assert.equal(code, 0, `dr-gateway exited with ${code} after SIGTERM:\n${ctx.gateway.logTail()}`);
    assert.ok(tookMs < 5_000, `dr-gateway took ${tookMs} ms to drain:\n${ctx.gateway.logTail()}`);
  });
  return ctx;
}
