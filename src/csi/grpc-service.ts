import {
  status,
  type sendUnaryData,
  type ServerUnaryCall,
  type ServiceDefinition,
  type UntypedServiceImplementation,
} from "@grpc/grpc-js";
import { create, fromBinary, toBinary, type DescMessage, type MessageInitShape, type MessageShape } from "@bufbuild/protobuf";
import type { DescMethodUnary, DescService } from "@bufbuild/protobuf";
import type { Logger } from "pino";
import { toServiceError } from "./grpc-status.js";

type UnaryMethods<S extends DescService> = {
  [K in keyof S["method"] as S["method"][K] extends DescMethodUnary ? K : never]: S["method"][K];
};

/** Handlers for some or all unary methods of a service; missing ones answer UNIMPLEMENTED. */
export type UnaryImplementation<S extends DescService> = {
  [K in keyof UnaryMethods<S>]?: UnaryMethods<S>[K] extends DescMethodUnary<infer I extends DescMessage, infer O extends DescMessage>
    ? (request: MessageShape<I>, signal: AbortSignal) => Promise<MessageInitShape<O>>
    : never;
};

/**
 * Serves a protobuf-es service descriptor with @grpc/grpc-js, which (unlike Node's HTTP/2 server)
 * accepts the `:authority` values kubelet and grpc-go send over unix sockets.
 */
export function toGrpcService<S extends DescService>(
  service: S,
  implementation: UnaryImplementation<S>,
  logger: Logger,
): { definition: ServiceDefinition; handlers: UntypedServiceImplementation } {
  const definition: Record<string, ServiceDefinition[string]> = {};
  const handlers: UntypedServiceImplementation = {};
  for (const method of service.methods) {
    if (method.methodKind !== "unary") continue;
    definition[method.name] = {
      path: `/${service.typeName}/${method.name}`,
      requestStream: false,
      responseStream: false,
      requestSerialize: (message: MessageShape<DescMessage>) => Buffer.from(toBinary(method.input, message)),
      requestDeserialize: (bytes: Buffer) => fromBinary(method.input, bytes),
      responseSerialize: (message: MessageShape<DescMessage>) => Buffer.from(toBinary(method.output, message)),
      responseDeserialize: (bytes: Buffer) => fromBinary(method.output, bytes),
      originalName: method.localName,
    };
    const handler = (implementation as Record<string, ((request: unknown, signal: AbortSignal) => Promise<unknown>) | undefined>)[
      method.localName
    ];
    handlers[method.name] = (call: ServerUnaryCall<unknown, unknown>, callback: sendUnaryData<unknown>) => {
      if (!handler) {
        callback({ code: status.UNIMPLEMENTED, details: `${method.name} is not supported by csi.spire.io (ephemeral inline volumes only)` });
        return;
      }
      const cancelled = new AbortController();
      call.on("cancelled", () => cancelled.abort(new Error("cancelled by the caller")));
      const started = performance.now();
      handler(call.request, cancelled.signal).then(
        (response) => {
          logger.debug({ method: method.name, ms: Math.round(performance.now() - started) }, "csi call ok");
          callback(null, create(method.output, response as MessageInitShape<DescMessage>));
        },
        (error: unknown) => {
          const serviceError = toServiceError(error);
          logger.warn({ method: method.name, code: status[serviceError.code ?? status.UNKNOWN], reason: serviceError.details }, "csi call failed");
          callback(serviceError);
        },
      );
    };
  }
  return { definition: definition as ServiceDefinition, handlers };
}
