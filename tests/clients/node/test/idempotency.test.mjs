// A Node client's retry of CreateFulfillment with the same request_id moves money once:
// one fulfillment id, one POST /fulfillments, one fulfillment held by DR (the sandbox).
import assert from 'node:assert/strict';
import { test } from 'node:test';

import { unary } from '../client.mjs';
import { useGateway } from '../harness.mjs';

const ctx = useGateway();

test('the same request_id twice returns one fulfillment and DR holds exactly one', async () => {
  // Arrange
  const order = await ctx.sandbox.createOrder([{ quantity: 2, amount: '20.00' }]);
  const request = {
    order_id: order.id,
    items: [{ item_id: order.items[0].id, quantity: 1 }],
    request_id: `shipment-${order.id}`,
  };

  // Act
  const first = await unary(ctx.fulfillments, 'CreateFulfillment', request);
  const retry = await unary(ctx.fulfillments, 'CreateFulfillment', request);

  // Assert
  assert.match(first.fulfillment.id, /^ful_/);
  assert.equal(retry.fulfillment.id, first.fulfillment.id);
  const held = await ctx.sandbox.fulfillmentsOf(order.id);
  assert.deepEqual(held.map((f) => f.id), [first.fulfillment.id]);
  const posts = (await ctx.sandbox.requests('POST', '/fulfillments')).filter((p) => p.body?.orderId === order.id);
  assert.equal(posts.length, 1);
  assert.equal(posts[0].body.metadata.requestId, request.request_id);
});

test('a concurrent retry with the same request_id still creates one fulfillment', async () => {
  const order = await ctx.sandbox.createOrder([{ quantity: 3, amount: '30.00' }]);
  const request = {
    order_id: order.id,
    items: [{ item_id: order.items[0].id, quantity: 1 }],
    request_id: `concurrent-${order.id}`,
  };

  const replies = await Promise.all([1, 2, 3].map(() => unary(ctx.fulfillments, 'CreateFulfillment', request)));

  assert.equal(new Set(replies.map((r) => r.fulfillment.id)).size, 1);
  assert.equal((await ctx.sandbox.fulfillmentsOf(order.id)).length, 1);
});
