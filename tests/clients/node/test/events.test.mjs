// EventStream.Subscribe from Node: typed payloads, heartbeats while idle, and resuming
// after a cursor with no gap and no duplicate. Every stream has a deadline and is
// cancelled.
import assert from 'node:assert/strict';
import { test } from 'node:test';

import { unary } from '../client.mjs';
import { useGateway } from '../harness.mjs';

const ctx = useGateway();
const CAPTURE_COMPLETE = 'order.charge.capture.complete';
const STREAM_DEADLINE_MS = 20_000;

/** Messages of a Subscribe call, one at a time; `close()` cancels the call. */
function subscribe(request) {
  const call = ctx.events.Subscribe(request, { deadline: Date.now() + STREAM_DEADLINE_MS });
  const queue = [];
  const waiters = [];
  const push = (item) => (waiters.length ? waiters.shift()(item) : queue.push(item));
  call.on('data', (message) => push({ message }));
  call.on('error', (error) => push({ error }));
  call.on('end', () => push({ end: true }));
  return {
    async next() {
      const item = queue.length ? queue.shift() : await new Promise((resolve) => waiters.push(resolve));
      if (item.error) throw item.error;
      return item.end ? null : item.message;
    },
    close: () => call.cancel(),
  };
}

/** Every event the stream sends before its first heartbeat (1 s of silence), which
 * marks the end of the backlog; and that heartbeat. */
async function eventsUntilIdle(request) {
  const stream = subscribe({ ...request, heartbeat_interval: { seconds: 1, nanos: 0 } });
  const events = [];
  try {
    for (;;) {
      const message = await stream.next();
      assert.ok(message, `the stream ended without a heartbeat after ${events.length} events`);
      if (message.kind === 'heartbeat') return { events, heartbeat: message.heartbeat };
      events.push(message.event);
    }
  } finally {
    stream.close();
  }
}

async function captureOneUnit(order, requestId) {
  const reply = await unary(ctx.charges, 'CaptureItems', {
    order_id: order.id,
    items: [{ item_id: order.items[0].id, quantity: 1 }],
    request_id: requestId,
    wait: true,
  }, { timeoutMs: 20_000 });
  assert.equal(reply.settled, true);
}

const capturesOf = (orderId) => ({ types: [CAPTURE_COMPLETE], order_ids: [orderId] });

/** An order of 2 units whose captures completed one after the other. */
async function anOrderCapturedTwice() {
  const order = await ctx.sandbox.createOrder([{ productName: 'Widget', quantity: 2, amount: '26.89' }]);
  await captureOneUnit(order, `first-${order.id}`);
  await captureOneUnit(order, `second-${order.id}`);
  return order;
}

test('Subscribe from the oldest event delivers the capture events with a typed charge, then a heartbeat with the last cursor', async () => {
  const order = await anOrderCapturedTwice();

  const { events, heartbeat } = await eventsUntilIdle({ filter: capturesOf(order.id), position: 'START_POSITION_OLDEST' });

  assert.deepEqual(events.map((e) => e.type), [CAPTURE_COMPLETE, CAPTURE_COMPLETE]);
  const [first] = events;
  assert.equal(first.payload, 'charge');
  assert.equal(first.charge.order_id, order.id);
  assert.ok(first.cursor && first.id);
  const captured = first.charge.captures.filter((c) => c.state === 'complete').map((c) => c.amount);
  assert.deepEqual(captured[0], { currency_code: 'USD', units: '13', nanos: 450000000 });
  // google.protobuf.Struct comes from protobufjs' bundled well-known types, whose
  // field names stay camelCase even with keepCase.
  assert.deepEqual(first.data_object.fields.id, { kind: 'stringValue', stringValue: first.charge.id });
  assert.ok(heartbeat.cursor, 'the heartbeat carries a cursor to resume from');
});

test('resuming after a cursor yields the later event exactly once', async () => {
  // Arrange: the order's two capture events, as a first subscription saw them.
  const order = await anOrderCapturedTwice();
  const { events: seen } = await eventsUntilIdle({ filter: capturesOf(order.id), position: 'START_POSITION_OLDEST' });
  assert.equal(seen.length, 2);

  // Act: reconnect after the first event's cursor.
  const { events: resumed } = await eventsUntilIdle({ filter: capturesOf(order.id), after_cursor: seen[0].cursor });

  // Assert: the second event, once; not the cursor's own event again.
  assert.deepEqual(resumed.map((e) => e.id), [seen[1].id]);
  assert.equal(resumed[0].cursor, seen[1].cursor);
});

test('a live subscriber gets heartbeats while idle, then an event appended after it subscribed', async () => {
  // Arrange: a subscription from now, confirmed open by its first heartbeat.
  const order = await ctx.sandbox.createOrder([{ quantity: 1, amount: '5.00' }]);
  const stream = subscribe({
    filter: capturesOf(order.id),
    position: 'START_POSITION_NOW',
    heartbeat_interval: { seconds: 1, nanos: 0 },
  });
  try {
    assert.equal((await stream.next()).kind, 'heartbeat');

    // Act
    await captureOneUnit(order, `live-${order.id}`);

    // Assert
    for (;;) {
      const message = await stream.next();
      assert.ok(message, 'the stream ended before the event arrived');
      if (message.kind === 'event') {
        assert.equal(message.event.type, CAPTURE_COMPLETE);
        assert.equal(message.event.charge.order_id, order.id);
        break;
      }
    }
  } finally {
    stream.close();
  }
});
