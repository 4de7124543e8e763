'use strict';
// Sluice in-process for Node.js: `new Gateway(toml)`, `await gw.chat(req)`,
// `for await (const chunk of gw.stream(req))`, `gw.serve(listen)`.
// The native addon (sluice.node) is built from bindings/node by cargo:
//   cargo build -p sluice-node --release && cp target/release/libsluice_node.so bindings/node/sluice.node
// SLUICE_NODE_ADDON names another file.

const path = require('node:path');

const native = require(process.env.SLUICE_NODE_ADDON || path.join(__dirname, 'sluice.node'));

const CHAT = '/v1/chat/completions';
const PREDICT = '/v1/predict';

/** A request the gateway refused or could not complete. */
class SluiceError extends Error {
  constructor(status, code, message, body) {
    super(code ? `${status} ${code}: ${message}` : `${status}: ${message}`);
    this.name = 'SluiceError';
    this.status = status;
    this.code = code;
    this.body = body;
  }
}

function errorOf(status, raw) {
  let body;
  try {
    body = JSON.parse(raw);
  } catch {
    return new SluiceError(status, null, raw, undefined);
  }
  const e = body && body.error;
  if (e && typeof e === 'object') {
    return new SluiceError(status, e.code || e.type || null, String(e.message ?? ''), body);
  }
  return new SluiceError(status, null, typeof e === 'string' ? e : raw, body);
}

function replyOf({ status, body }) {
  if (status >= 200 && status < 300) return JSON.parse(body);
  throw errorOf(status, body);
}

function nativeOptions(opts = {}) {
  const o = {};
  if (opts.apiKey != null) o.apiKey = opts.apiKey;
  if (opts.timeout != null) o.timeoutMs = Math.max(1, Math.round(opts.timeout * 1000));
  if (opts.headers) o.headers = Object.entries(opts.headers).map(([k, v]) => [k, String(v)]);
  return o;
}

/** The chunks of a streamed answer: `for await`, or `close()` to cancel. */
class ChunkStream {
  constructor(nativeStream) {
    this._native = nativeStream;
    this._done = false;
  }

  async next() {
    if (this._done) return { done: true, value: undefined };
    const item = await this._native.next();
    if (item == null) {
      this._done = true;
      return { done: true, value: undefined };
    }
    if (item.status !== 200) {
      this.close();
      throw errorOf(item.status, item.body);
    }
    const chunk = JSON.parse(item.body);
    if (chunk && chunk.error && !chunk.choices) {
      this.close();
      const s = typeof chunk.error.status === 'number' ? chunk.error.status : 502;
      throw errorOf(s, item.body);
    }
    return { done: false, value: chunk };
  }

  /** Leaving a `for await` early cancels the request upstream. */
  async return() {
    this.close();
    return { done: true, value: undefined };
  }

  close() {
    this._done = true;
    this._native.close();
  }

  [Symbol.asyncIterator]() {
    return this;
  }
}

/** A gateway in this process (TOML configuration, or the embedded default). */
class Gateway {
  constructor(config, { apiKey } = {}) {
    try {
      this._native = new native.NativeGateway(config ?? null);
    } catch (e) {
      if (e && e.code === 'InvalidArg') throw new SluiceError(400, 'invalid_config', e.message, undefined);
      throw e;
    }
    if (apiKey != null) this._native.setApiKey(apiKey);
    this.address = null;
    this.adminAddress = null;
  }

  async chat(request, opts) {
    return this.request(CHAT, request, opts);
  }

  async predict(request, opts) {
    return this.request(PREDICT, request, opts);
  }

  /** Any JSON POST of the API, e.g. '/v1/embeddings'. */
  async request(path, body, opts) {
    return replyOf(await this._native.call(path, JSON.stringify(body), nativeOptions(opts)));
  }

  /** The chunks of a streamed answer (`stream: true` is set). */
  stream(request, opts = {}) {
    const p = opts.path || CHAT;
    return new ChunkStream(this._native.openStream(p, JSON.stringify(request), nativeOptions(opts)));
  }

  /** Also serves HTTP; returns 'host:port'. */
  serve(listen = '127.0.0.1:0', adminListen) {
    [this.address, this.adminAddress] = this._native.serve(listen, adminListen ?? null);
    return this.address;
  }

  stop() {
    this._native.stop();
    this.address = this.adminAddress = null;
  }

  metrics() {
    return this._native.metrics();
  }

  /** Swaps in a new configuration (a hot reload); throws when refused. */
  reload(config) {
    try {
      this._native.reload(config);
    } catch (e) {
      if (e && e.code === 'InvalidArg') throw new SluiceError(400, 'invalid_config', e.message, undefined);
      throw e;
    }
  }

  setApiKey(key) {
    this._native.setApiKey(key ?? null);
  }
}

module.exports = { Gateway, SluiceError, ChunkStream, version: require('./package.json').version };
