// How a Node service calls dr-gateway, exactly as the README's "Clients" section shows
// it: @grpc/grpc-js + @grpc/proto-loader for the API, protobufjs + google-proto-files
// to read the google.rpc details of an error.
import path from 'node:path';
import { fileURLToPath } from 'node:url';

import grpc from '@grpc/grpc-js';
import protoLoader from '@grpc/proto-loader';
import protoFiles from 'google-proto-files';
import protobuf from 'protobufjs';

export const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../..');
export const PROTO_DIR = path.join(ROOT, 'proto');
const API_FILES = ['charge_service', 'event_stream', 'fulfillment_service', 'resources'].map(
  (name) => `digitalriver/gateway/v1/${name}.proto`,
);

// Without these, snake_case JSON keys are dropped (keepCase), int64 arrive as Long
// objects (longs), enums as numbers (enums), unset fields are missing (defaults), and
// a oneof does not say which member is set (oneofs).
export const LOADER_OPTIONS = { keepCase: true, longs: String, enums: String, defaults: true, oneofs: true };

/** The `digitalriver.gateway.v1` package: FulfillmentService, ChargeService, EventStream. */
export function loadApi(protoDir = PROTO_DIR) {
  const definition = protoLoader.loadSync(API_FILES, { ...LOADER_OPTIONS, includeDirs: [protoDir] });
  return grpc.loadPackageDefinition(definition).digitalriver.gateway.v1;
}

// google.rpc.Status and the detail messages (ErrorInfo, BadRequest, RetryInfo, …).
const rpc = new protobuf.Root().loadSync(
  [protoFiles.getProtoPath('rpc', 'status.proto'), protoFiles.getProtoPath('rpc', 'error_details.proto')],
  { keepCase: true },
);
const Status = rpc.lookupType('google.rpc.Status');

/** The error's google.rpc details, decoded: [{ '@type': 'google.rpc.ErrorInfo', reason, … }]. */
export function errorDetails(err) {
  const [bin] = err.metadata?.get('grpc-status-details-bin') ?? [];
  if (!bin) return [];
  return Status.decode(bin).details.map((any) => {
    const type = rpc.lookupType(any.type_url.slice(any.type_url.lastIndexOf('/') + 1));
    const detail = type.toObject(type.decode(any.value), { longs: String, enums: String, defaults: true });
    return { '@type': type.fullName.slice(1), ...detail };
  });
}

/** A unary call as a promise; `timeoutMs` becomes the call's deadline. */
export function unary(client, method, request, { timeoutMs = 10_000 } = {}) {
  return new Promise((resolve, reject) => {
    client[method](request, { deadline: Date.now() + timeoutMs }, (err, reply) => (err ? reject(err) : resolve(reply)));
  });
}
