/**
 * A typed Node.js client for the styletransfer gRPC API (`styletransfer.v1`).
 *
 * The messages and the `StyleTransferClient` stub are generated from
 * `proto/styletransfer/v1/style_transfer.proto` by ts-proto (`npm run generate`, into `src/gen/`);
 * this module adds what every caller needs on top: a channel with the server's message-size
 * limit, bearer tokens, deadlines, an async iterator over a job's events that cancels the job
 * when the caller stops early, and errors that carry the gRPC status code by name.
 */
import {
  type CallOptions,
  type ChannelCredentials,
  type ClientOptions,
  Metadata,
  type ServiceError,
  credentials,
  status,
} from "@grpc/grpc-js";

import {
  type Accepted,
  type DeepPartial,
  type Result,
  type ServerInfo,
  type StyleImage,
  StyleTransferClient,
  type TransferEvent,
  type TransferOptions,
  TransferRequest,
} from "./gen/styletransfer/v1/style_transfer";

export * from "./gen/styletransfer/v1/style_transfer";

/** The server's address when none is given: `make run` serves here. */
export const DEFAULT_TARGET = "127.0.0.1:50051";

/** Largest message sent or received; the server's default `max_message_bytes` (64 MiB). */
export const DEFAULT_MAX_MESSAGE_BYTES = 64 * 1024 * 1024;

/** How to reach a server. */
export interface ConnectOptions {
  /** `host:port`; default {@link DEFAULT_TARGET}. */
  target?: string;
  /** Use TLS, verified against the system roots unless `tlsCa` is given. */
  tls?: boolean;
  /** PEM of the CA that signed the server's certificate; implies `tls`. */
  tlsCa?: Buffer;
  /** PEM client certificate and key, for servers that require mutual TLS; imply `tls`. */
  tlsCert?: Buffer;
  tlsKey?: Buffer;
  /** Bearer token sent as `authorization` metadata on every call. */
  token?: string;
  /** Largest message in either direction; default {@link DEFAULT_MAX_MESSAGE_BYTES}. */
  maxMessageBytes?: number;
}

/** A connected client: the generated stub plus the metadata every call carries. */
export interface Connection {
  /** The generated, typed stub; use it directly for the RPCs this module does not wrap. */
  readonly stub: StyleTransferClient;
  /** Metadata sent with every call made through this module (the bearer token, if any). */
  readonly metadata: Metadata;
  /** Closes the channel. */
  close(): void;
}

/** Opens a channel to a server. Nothing is sent until the first call. */
export function connect(options: ConnectOptions = {}): Connection {
  const maxBytes = options.maxMessageBytes ?? DEFAULT_MAX_MESSAGE_BYTES;
  const clientOptions: Partial<ClientOptions> = {
    "grpc.max_send_message_length": maxBytes,
    "grpc.max_receive_message_length": maxBytes,
  };
  const target = options.target ?? DEFAULT_TARGET;
  const stub = new StyleTransferClient(target, channelCredentials(options), clientOptions);
  const metadata = new Metadata();
  if (options.token) {
    metadata.set("authorization", `Bearer ${options.token}`);
  }
  return { stub, metadata, close: () => stub.close() };
}

function channelCredentials(options: ConnectOptions): ChannelCredentials {
  const secure = options.tls || options.tlsCa || options.tlsCert || options.tlsKey;
  if (!secure) {
    return credentials.createInsecure();
  }
  return credentials.createSsl(options.tlsCa ?? null, options.tlsKey ?? null, options.tlsCert ?? null);
}

/** A style image with its blend weight (> 0, default 1). */
export interface WeightedStyle {
  data: Uint8Array;
  weight?: number;
  /** Where the style applies: an image whose luminance is the strength (white fully). */
  mask?: Uint8Array;
}

/** One job: encoded images (PNG, JPEG or WebP) and options; unset options take the server's defaults. */
export interface TransferInput {
  content: Uint8Array;
  styles: ReadonlyArray<Uint8Array | WeightedStyle>;
  options?: DeepPartial<TransferOptions>;
  /** Makes a retried call attach to the job already made under this key instead of running another. */
  idempotencyKey?: string;
}

/** Per-call settings. */
export interface CallSettings {
  /** gRPC deadline in seconds from now; when it passes the job ends DEADLINE_EXCEEDED. */
  deadlineSeconds?: number;
  /** Aborting it cancels the call, and so the job, before its next iteration. */
  signal?: AbortSignal;
}

/** A failed call: its gRPC status code, by number and by name, and the server's details. */
export class StyleTransferError extends Error {
  readonly code: status;
  readonly codeName: string;
  readonly details: string;
  readonly metadata: Metadata;

  constructor(code: status, details: string, metadata: Metadata = new Metadata()) {
    const codeName = status[code] ?? `UNKNOWN_CODE_${code}`;
    super(`${codeName}: ${details}`);
    this.name = "StyleTransferError";
    this.code = code;
    this.codeName = codeName;
    this.details = details;
    this.metadata = metadata;
  }

  /** Wraps what a grpc-js call threw; anything that is not a gRPC status is returned unchanged. */
  static from(error: unknown): unknown {
    if (error instanceof StyleTransferError || !isServiceError(error)) {
      return error;
    }
    return new StyleTransferError(error.code, error.details, error.metadata);
  }
}

function isServiceError(error: unknown): error is ServiceError {
  return (
    error instanceof Error &&
    "code" in error &&
    typeof error.code === "number" &&
    "details" in error &&
    typeof error.details === "string" &&
    "metadata" in error &&
    error.metadata instanceof Metadata
  );
}

function callOptions(settings: CallSettings): Partial<CallOptions> {
  return settings.deadlineSeconds === undefined
    ? {}
    : { deadline: new Date(Date.now() + settings.deadlineSeconds * 1000) };
}

/** Builds the request message for {@link TransferInput}. */
export function transferRequest(input: TransferInput): TransferRequest {
  const styles: StyleImage[] = input.styles.map((style) =>
    style instanceof Uint8Array
      ? { image: { data: asBuffer(style) }, weight: undefined, mask: undefined }
      : {
          image: { data: asBuffer(style.data) },
          weight: style.weight,
          mask: style.mask === undefined ? undefined : { data: asBuffer(style.mask) },
        },
  );
  return TransferRequest.fromPartial({
    content: { data: asBuffer(input.content) },
    styles,
    options: input.options ?? {},
    idempotencyKey: input.idempotencyKey ?? "",
  });
}

/** The generated messages hold bytes as Buffers; a Buffer view of any Uint8Array, without a copy. */
function asBuffer(bytes: Uint8Array): Buffer {
  return Buffer.isBuffer(bytes) ? bytes : Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength);
}

/**
 * Runs one job with the server-streaming `Transfer` RPC and yields its events as they come:
 * one `accepted`, one `progress` per iteration, `preview`s if asked for, then one `result`.
 * Each event's `event` is a discriminated union on `$case`.
 *
 * A failed call throws a {@link StyleTransferError}. Leaving the loop early (break, return,
 * an exception in the loop body) or aborting `settings.signal` cancels the call, which cancels
 * the job on the server.
 */
export async function* transfer(
  connection: Connection,
  input: TransferInput,
  settings: CallSettings = {},
): AsyncGenerator<TransferEvent, void, undefined> {
  settings.signal?.throwIfAborted();
  const call = connection.stub.transfer(transferRequest(input), connection.metadata, callOptions(settings));
  let finished = false;
  const onAbort = (): void => call.cancel();
  settings.signal?.addEventListener("abort", onAbort, { once: true });
  try {
    for await (const event of call as AsyncIterable<TransferEvent>) {
      yield event;
    }
    finished = true;
  } catch (error: unknown) {
    finished = true;
    throw StyleTransferError.from(error);
  } finally {
    settings.signal?.removeEventListener("abort", onAbort);
    if (!finished) {
      call.cancel();
    }
  }
}

/** The result of a finished job, with what was accepted. */
export interface Stylized {
  accepted: Accepted;
  result: Result;
}

/**
 * Runs one job to the end and returns its result; `onEvent` sees every event on the way.
 * Throws a {@link StyleTransferError} if the call fails.
 */
export async function stylize(
  connection: Connection,
  input: TransferInput,
  settings: CallSettings & { onEvent?: (event: TransferEvent) => void } = {},
): Promise<Stylized> {
  let accepted: Accepted | undefined;
  for await (const event of transfer(connection, input, settings)) {
    settings.onEvent?.(event);
    if (event.event?.$case === "accepted") {
      accepted = event.event.value;
    } else if (event.event?.$case === "result") {
      if (accepted === undefined) {
        throw new Error("the server sent a result before accepting the job");
      }
      return { accepted, result: event.event.value };
    }
  }
  throw new Error("the stream ended without a result");
}

/** `GetServerInfo`: version, backends, weights, limits and defaults. */
export function getServerInfo(connection: Connection, settings: CallSettings = {}): Promise<ServerInfo> {
  return new Promise<ServerInfo>((resolve, reject) => {
    const call = connection.stub.getServerInfo(
      {},
      connection.metadata,
      callOptions(settings),
      (error: ServiceError | null, response: ServerInfo) => {
        settings.signal?.removeEventListener("abort", onAbort);
        if (error) {
          reject(StyleTransferError.from(error));
        } else {
          resolve(response);
        }
      },
    );
    const onAbort = (): void => call.cancel();
    settings.signal?.addEventListener("abort", onAbort, { once: true });
  });
}
