// The README's Node consumer-group member, run as written: the code block between
// `<!-- consumer-member:node:start -->` and `:end -->` is loaded as the CommonJS
// module it is (its `require` resolves from this harness's node_modules), joins a
// group it creates itself, and gets one order's events, each once, in DR's
// creation order, then leaves.
import assert from 'node:assert/strict';
import fs from 'node:fs';
import { createRequire, Module } from 'node:module';
import path from 'node:path';
import { test } from 'node:test';
import { fileURLToPath } from 'node:url';
import vm from 'node:vm';

import { PROTO_DIR, ROOT, unary } from '../client.mjs';
import { eventually } from '../gateway.mjs';
import { useGateway } from '../harness.mjs';

const ctx = useGateway();
const HERE = path.dirname(fileURLToPath(import.meta.url));
const DEADLINE_MS = 30_000;

/** The README's Node member block, evaluated as a CommonJS module. */
function readmeGroupMember() {
  const readme = fs.readFileSync(path.join(ROOT, 'README.md'), 'utf8');
  const block = readme.match(/<!-- consumer-member:node:start -->\s*```js\n([\s\S]*?)```\s*<!-- consumer-member:node:end -->/);
  assert.ok(block, 'README has a Node consumer-member block');
  const filename = path.join(HERE, 'readme-group-member.cjs');
  const module = { exports: {} };
  const wrapped = vm.runInThisContext(Module.wrap(block[1]), { filename: 'README.md (node group member)' });
  wrapped(module.exports, createRequire(filename), module, filename, HERE);
  assert.equal(typeof module.exports.groupMember, 'function', 'the block exports groupMember');
  return module.exports.groupMember;
}

function orderIdOf(event) {
  if (event.payload === 'order') return event.order.id;
  if (event.payload === 'charge') return event.charge.order_id;
  if (event.payload === 'fulfillment') return event.fulfillment.order_id;
  return '';
}

/** DR's createdTime in microseconds (exact: int64 seconds arrive as strings). */
const createdUs = (event) => BigInt(event.create_time.seconds) * 1_000_000n + BigInt(Math.floor(event.create_time.nanos / 1000));

test("the README's Node member gets an order's events once each, in creation order, and leaves when stopped", async () => {
  // Arrange: the README's member in a fresh group it creates itself.
  const groupMember = readmeGroupMember();
  const order = await ctx.sandbox.createOrder([{ productName: 'Widget', quantity: 1, amount: '4.50' }]);
  const groupId = `node-${order.id}`;
  const seen = [];
  let complete;
  const completed = new Promise((resolve) => { complete = resolve; });
  const member = groupMember({
    target: ctx.gateway.target,
    groupId,
    name: 'node-1',
    protoDir: PROTO_DIR,
    handle: async (event) => {
      if (orderIdOf(event) !== order.id) return;
      seen.push(event);
      if (event.type === 'order.complete') complete();
    },
  });
  let stopped = false;
  try {
    await eventually('the member in its group', async () => {
      const reply = await unary(ctx.events, 'GetConsumerGroup', { group_id: groupId });
      return reply.group.members.length === 1;
    }, { timeoutMs: DEADLINE_MS });

    // Act: DR's lifecycle of the order (the sandbox sends its webhooks concurrently).
    const reply = await unary(ctx.charges, 'CaptureItems', {
      order_id: order.id,
      items: [{ item_id: order.items[0].id, quantity: 1 }],
      request_id: `group-${order.id}`,
      wait: true,
    }, { timeoutMs: 20_000 });
    assert.equal(reply.settled, true);
    let timer;
    await Promise.race([
      completed,
      new Promise((_, reject) => { timer = setTimeout(() => reject(new Error(`order.complete never reached the member: ${seen.map((e) => e.type)}`)), DEADLINE_MS); }),
    ]).finally(() => clearTimeout(timer));
    member.stop();
    stopped = true;

    // Assert: each event once, in creation order, up to order.complete; then the
    // member left the group.
    const types = seen.map((e) => e.type);
    assert.equal(types.at(-1), 'order.complete', `${types}`);
    assert.ok(types.indexOf('order.accepted') < types.indexOf('order.fulfilled'), `${types}`);
    assert.equal(new Set(seen.map((e) => e.id)).size, seen.length, `an event was processed twice: ${types}`);
    const times = seen.map(createdUs);
    assert.deepEqual(times, [...times].sort((a, b) => (a < b ? -1 : a > b ? 1 : 0)), `out of creation order: ${types}`);
    await eventually('the member gone from its group', async () => {
      const { group } = await unary(ctx.events, 'GetConsumerGroup', { group_id: groupId });
      return group.members.length === 0;
    }, { timeoutMs: DEADLINE_MS });
  } finally {
    if (!stopped) member.stop();
  }
});
