// Drives the README's Node consumer-group member (written to a file by
// tests/clients/test_consumer_groups.py): prints "consuming" once the member is in
// the group, then one JSON line per event of ORDER_ID, and exits 0 after that
// order's `order.complete` (or 1 after 30 s).
//
// usage: node drive_member.js MEMBER_MODULE TARGET GROUP_ID ORDER_ID PROTO_DIR
"use strict";

const [moduleFile, target, groupId, orderId, protoDir] = process.argv.slice(2);
const { groupMember } = require(moduleFile);

const deadline = setTimeout(() => {
  console.error("timed out waiting for order.complete");
  process.exit(1);
}, 30000);

function orderIdOf(event) {
  if (event.payload === "order") return event.order.id;
  if (event.payload === "charge") return event.charge.order_id;
  if (event.payload === "fulfillment") return event.fulfillment.order_id;
  return "";
}

let announced = false;
const member = groupMember({
  target,
  groupId,
  name: "node-1",
  protoDir,
  handle: async (event) => {
    if (orderIdOf(event) !== orderId) return;
    const created = BigInt(event.create_time.seconds) * 1000000n + BigInt(Math.floor(event.create_time.nanos / 1000));
    console.log(JSON.stringify({ id: event.id, type: event.type, created: Number(created) }));
    if (event.type === "order.complete") {
      member.stop();
      clearTimeout(deadline);
      // Let the acknowledgement and the half-close go out before exiting.
      setImmediate(() => process.exit(0));
    }
  },
});

// The group exists (created by this member) once GetConsumerGroup lists a member.
const grpc = require("@grpc/grpc-js");
const protoLoader = require("@grpc/proto-loader");
const definition = protoLoader.loadSync("digitalriver/gateway/v1/event_stream.proto", {
  includeDirs: [protoDir], keepCase: true, longs: String, enums: String, defaults: true, oneofs: true,
});
const { EventStream } = grpc.loadPackageDefinition(definition).digitalriver.gateway.v1;
const admin = new EventStream(target, grpc.credentials.createInsecure());
(function poll() {
  admin.GetConsumerGroup({ group_id: groupId }, (err, reply) => {
    if (!announced && !err && reply.group.members.length > 0) {
      announced = true;
      console.log("consuming");
      return;
    }
    setTimeout(poll, 20);
  });
})();
