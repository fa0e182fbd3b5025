// DR's errors as a Node caller sees them: a gRPC status code, and every google.rpc
// detail the gateway sends decoded from `grpc-status-details-bin` (errorDetails, the
// README's snippet): ErrorInfo, BadRequest, PreconditionFailure, ResourceInfo,
// RetryInfo and QuotaFailure.
import assert from 'node:assert/strict';
import { test } from 'node:test';

import grpc from '@grpc/grpc-js';

import { errorDetails, unary } from '../client.mjs';
import { useGateway } from '../harness.mjs';

const ctx = useGateway();
const DOMAIN = 'digitalriver.com';

/** The call's error; fails the test when the call succeeds. */
async function failureOf(promise) {
  try {
    await promise;
  } catch (err) {
    return err;
  }
  assert.fail('the call succeeded');
}

/** The one detail of `type` ('google.rpc.ErrorInfo', …) among the error's details. */
function detail(err, type) {
  const found = errorDetails(err).filter((d) => d['@type'] === type);
  assert.equal(found.length, 1, `one ${type} among ${JSON.stringify(errorDetails(err))}`);
  return found[0];
}

const allUnits = (order) => [{ item_id: order.items[0].id, quantity: order.items[0].quantity }];

test('fulfilling a fulfilled order is FAILED_PRECONDITION with ErrorInfo ORDER_FULFILLED and a PreconditionFailure', async () => {
  // Arrange: an order whose only item is already fulfilled.
  const order = await ctx.sandbox.createOrder([{ quantity: 1, amount: '10.00' }]);
  await unary(ctx.fulfillments, 'CreateFulfillment', { order_id: order.id, items: allUnits(order), request_id: `first-${order.id}` });

  // Act
  const err = await failureOf(
    unary(ctx.fulfillments, 'CreateFulfillment', { order_id: order.id, items: allUnits(order), request_id: `second-${order.id}` }),
  );

  // Assert
  assert.equal(err.code, grpc.status.FAILED_PRECONDITION);
  const info = detail(err, 'google.rpc.ErrorInfo');
  assert.equal(info.reason, 'ORDER_FULFILLED');
  assert.equal(info.domain, DOMAIN);
  assert.equal(info.metadata.dr_code, 'order_fulfilled');
  assert.equal(info.metadata.http_status, '409');
  const { violations } = detail(err, 'google.rpc.PreconditionFailure');
  assert.deepEqual(violations.map((v) => [v.type, v.subject]), [['order_fulfilled', 'orderId']]);
  assert.equal((await ctx.sandbox.fulfillmentsOf(order.id)).length, 1, 'the refused call moved no money');
});

test('a request without items is INVALID_ARGUMENT with a BadRequest naming the field, and never reaches DR', async () => {
  const order = await ctx.sandbox.createOrder([{ quantity: 1, amount: '10.00' }]);

  const err = await failureOf(unary(ctx.fulfillments, 'CreateFulfillment', { order_id: order.id, items: [] }));

  assert.equal(err.code, grpc.status.INVALID_ARGUMENT);
  assert.equal(detail(err, 'google.rpc.ErrorInfo').domain, DOMAIN);
  const { field_violations } = detail(err, 'google.rpc.BadRequest');
  assert.deepEqual(field_violations.map((v) => v.field), ['items']);
  const posts = (await ctx.sandbox.requests('POST', '/fulfillments')).filter((p) => p.body?.orderId === order.id);
  assert.equal(posts.length, 0);
});

test('a negative quantity is INVALID_ARGUMENT naming items[0].quantity', async () => {
  const order = await ctx.sandbox.createOrder([{ quantity: 1, amount: '10.00' }]);

  const err = await failureOf(
    unary(ctx.fulfillments, 'CreateFulfillment', { order_id: order.id, items: [{ item_id: order.items[0].id, quantity: '-1' }] }),
  );

  assert.equal(err.code, grpc.status.INVALID_ARGUMENT);
  const fields = detail(err, 'google.rpc.BadRequest').field_violations.map((v) => v.field);
  assert.ok(fields.includes('items[0].quantity'), JSON.stringify(fields));
});

test('GetCharge of an unknown id is NOT_FOUND with a ResourceInfo naming the charge', async () => {
  const err = await failureOf(unary(ctx.charges, 'GetCharge', { charge_id: 'chg_does_not_exist' }));

  assert.equal(err.code, grpc.status.NOT_FOUND);
  const info = detail(err, 'google.rpc.ErrorInfo');
  assert.equal(info.domain, DOMAIN);
  assert.equal(info.metadata.http_status, '404');
  const resource = detail(err, 'google.rpc.ResourceInfo');
  assert.deepEqual([resource.resource_type, resource.resource_name], ['charge', 'chg_does_not_exist']);
});

test('a rate-limited POST is RESOURCE_EXHAUSTED with RetryInfo from Retry-After and a QuotaFailure', async () => {
  // Arrange: DR answers the next POST /fulfillments with 429 and Retry-After: 7.
  const order = await ctx.sandbox.createOrder([{ quantity: 1, amount: '10.00' }]);
  await ctx.sandbox.fault({ method: 'POST', path: '/fulfillments', count: 1, kind: 'status', status: 429, retryAfter: 7 });
  let err;
  try {
    // Act
    err = await failureOf(
      unary(ctx.fulfillments, 'CreateFulfillment', { order_id: order.id, items: allUnits(order), request_id: `limited-${order.id}` }),
    );
  } finally {
    await ctx.sandbox.clearFaults();
  }

  // Assert
  assert.equal(err.code, grpc.status.RESOURCE_EXHAUSTED);
  assert.equal(detail(err, 'google.rpc.ErrorInfo').metadata.http_status, '429');
  assert.deepEqual(detail(err, 'google.rpc.RetryInfo').retry_delay, { seconds: '7', nanos: 0 });
  assert.ok(detail(err, 'google.rpc.QuotaFailure').violations.length > 0);
  assert.equal((await ctx.sandbox.fulfillmentsOf(order.id)).length, 0, 'the refused POST created nothing');
});
