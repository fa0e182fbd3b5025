// Unary calls through @grpc/proto-loader with the README's loader options: snake_case
// keys, int64 as strings, enums as names, defaults present.
import assert from 'node:assert/strict';
import { test } from 'node:test';

import { unary } from '../client.mjs';
import { useGateway } from '../harness.mjs';

const ctx = useGateway();

test('GetOrder by the caller\'s own order id returns the items with int64 quantities as strings', async () => {
  const order = await ctx.sandbox.createOrder([{ productName: 'Widget', quantity: 2, amount: '26.89' }]);

  const reply = await unary(ctx.fulfillments, 'GetOrder', { upstream_id: order.upstreamId });

  assert.equal(reply.order.id, order.id);
  const [item] = reply.order.items;
  assert.equal(item.product_name, 'Widget');
  assert.equal(item.quantity, '2');
  assert.equal(item.open_quantity, '2');
  // defaults: true keeps the zero a proto3 encoder leaves out.
  assert.equal(item.fulfilled_quantity, '0');
});

test('CaptureItems with wait is settled and carries the exact amount as units and nanos', async () => {
  const order = await ctx.sandbox.createOrder([{ productName: 'Widget', quantity: 2, amount: '26.89' }]);

  const reply = await unary(ctx.charges, 'CaptureItems', {
    order_id: order.id,
    items: [{ item_id: order.items[0].id, quantity: 1 }],
    request_id: `ship-${order.id}`,
    wait: true,
  }, { timeoutMs: 20_000 });

  assert.equal(reply.settled, true);
  const amounts = reply.outcomes.map((o) => o.operation.amount);
  assert.deepEqual(amounts, [{ currency_code: 'USD', units: '13', nanos: 450000000 }]);
  assert.deepEqual(reply.outcomes.map((o) => o.operation.state), ['complete']);
});

test('ListOrderCharges of an order with nothing captured shows the zero amounts', async () => {
  const order = await ctx.sandbox.createOrder([{ quantity: 1, amount: '10.00' }]);

  const reply = await unary(ctx.charges, 'ListOrderCharges', { order_id: order.id });

  assert.deepEqual(reply.captured_amount, { currency_code: 'USD', units: '0', nanos: 0 });
  assert.deepEqual(reply.total_amount, { currency_code: 'USD', units: '10', nanos: 0 });
  assert.equal(reply.charges.length, 1);
});
