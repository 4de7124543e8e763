export interface CallOptions {
  /** Sent as `Authorization: Bearer` (needed when `[[keys]]` are set). */
  apiKey?: string;
  /** The whole call's deadline, in seconds. */
  timeout?: number;
  headers?: Record<string, string>;
}

export interface StreamOptions extends CallOptions {
  /** The route to stream from (default '/v1/chat/completions'). */
  path?: string;
}

export class SluiceError extends Error {
  /** The HTTP status the request would have had. */
  status: number;
  /** The error's code, e.g. 'model_not_found'. */
  code: string | null;
  body: unknown;
}

export class ChunkStream implements AsyncIterableIterator<any> {
  next(): Promise<IteratorResult<any>>;
  return(): Promise<IteratorResult<any>>;
  close(): void;
  [Symbol.asyncIterator](): ChunkStream;
}

export class Gateway {
  /** A TOML configuration (the server's format), or the embedded default. */
  constructor(config?: string | null, options?: { apiKey?: string });
  address: string | null;
  adminAddress: string | null;
  chat(request: object, opts?: CallOptions): Promise<any>;
  predict(request: object, opts?: CallOptions): Promise<any>;
  request(path: string, body: object, opts?: CallOptions): Promise<any>;
  stream(request: object, opts?: StreamOptions): ChunkStream;
  serve(listen?: string, adminListen?: string): string;
  stop(): void;
  metrics(): string;
  setApiKey(key: string | null): void;
  /** Swaps in a new configuration (a hot reload); throws SluiceError when refused. */
  reload(config: string): void;
}

export const version: string;
