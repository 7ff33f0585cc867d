// The Wicket plugin SDK for JavaScript, over the bindings componentize-js
// generates from `wit/plugin.wit` (contract `wicket:plugin@0.1.5`).
//
//   import * as wicket from "./wicket.js";
//   export const { init, onRequest, onResponse } = wicket.definePolicy({
//     configure(config) { this.header = wicket.config.string(config, "header"); },
//     request(req) {
//       if (req.header(this.header) !== undefined) return wicket.respond(403, { json: { error: "denied" } });
//       return wicket.proceed();
//     },
//   });
//
// Hooks left out of the definition are not declared, so the gateway never
// calls them. Header values are text (UTF-8); `headerBytes` gives the raw
// bytes. Numbers the contract holds as 64-bit (counters, TTLs, versions)
// are plain numbers here, exact up to 2^53.

import * as wState from "wicket:plugin/state@0.1.5";
import * as wContext from "wicket:plugin/context@0.1.5";
import * as wLog from "wicket:plugin/log@0.1.5";
import * as wMetrics from "wicket:plugin/metrics@0.1.5";
import * as wClock from "wicket:plugin/clock@0.1.5";
import * as wGateway from "wicket:plugin/gateway@0.1.5";
import * as wSpan from "wicket:plugin/span@0.1.5";

const encoder = new TextEncoder();
const decoder = new TextDecoder();

/** Thrown by `configure` to refuse a config; start the message with the field. */
export class ConfigError extends Error {}

/** A state call failed: `kind` is `unavailable`, `too-large` or `not-a-counter`. */
export class StateError extends Error {
  constructor(kind) {
    super(kind);
    this.kind = kind;
  }
}

const text = (v) => (v === undefined || v === null ? undefined : decoder.decode(v));
const bytes = (v) => (v instanceof Uint8Array ? v : encoder.encode(String(v)));
const pairs = (headers) => {
  if (!headers) return [];
  const entries = Array.isArray(headers) ? headers : Object.entries(headers);
  return entries.map(([name, value]) => ({ name: String(name).toLowerCase(), value: bytes(value) }));
};

/** The request as it stands at this plugin; each accessor asks the host once. */
export class Request {
  constructor(raw) {
    this.raw = raw;
    this.cache = new Map();
  }
  #get(key, fetch) {
    if (!this.cache.has(key)) this.cache.set(key, fetch());
    return this.cache.get(key);
  }
  get method() { return this.#get("method", () => this.raw.method()); }
  get scheme() { return this.#get("scheme", () => this.raw.scheme()); }
  get authority() { return this.#get("authority", () => this.raw.authority()); }
  get path() { return this.#get("path", () => this.raw.path()); }
  get query() { return this.#get("query", () => this.raw.query()); }
  get route() { return this.#get("route", () => this.raw.route()); }
  get upstream() { return this.#get("upstream", () => this.raw.upstream()); }
  get clientIp() { return this.#get("clientIp", () => this.raw.clientIp()); }
  get clientPort() { return this.#get("clientPort", () => this.raw.clientPort()); }
  get requestId() { return this.#get("requestId", () => this.raw.requestId()); }
  /** Tries the upstream call made: 1 unless it retried; 0 in onRequest (contract 0.1.3). */
  get upstreamAttempts() { return this.raw.upstreamAttempts(); }
  /** `{ traceId, parentId, sampled, traceState }` or undefined. */
  get trace() { return this.#get("trace", () => this.raw.traceContext()); }
  /** `{ serverName, alpn, version, clientCertificate }` or undefined (cleartext). */
  get tls() { return this.#get("tls", () => this.raw.tls()); }
  /** The first value of header `name` as text, or undefined. */
  header(name) { return text(this.raw.header(name.toLowerCase())); }
  /** The first value as bytes: compare credentials as bytes. */
  headerBytes(name) { return this.raw.header(name.toLowerCase()); }
  headerValues(name) { return this.raw.headerValues(name.toLowerCase()).map(text); }
  /** Every header as [name, text] in arrival order (copies them all). */
  headers() { return this.raw.headers().map((h) => [h.name, text(h.value)]); }
  param(name) { return this.raw.param(name); }
  queryParam(name) {
    for (const pair of (this.query ?? "").split("&")) {
      const i = pair.indexOf("=");
      const key = i < 0 ? pair : pair.slice(0, i);
      if (key === name) return i < 0 ? "" : pair.slice(i + 1);
    }
    return undefined;
  }
  cookie(name) {
    for (const line of this.headerValues("cookie")) {
      for (const part of line.split(";")) {
        const [key, ...rest] = part.trim().split("=");
        if (key === name) return rest.join("=");
      }
    }
    return undefined;
  }
}

/** The response head `response` sees. */
export class ResponseHead {
  constructor(raw) { this.raw = raw; }
  get status() { return this.raw.status(); }
  header(name) { return text(this.raw.header(name.toLowerCase())); }
  headerValues(name) { return this.raw.headerValues(name.toLowerCase()).map(text); }
}

const outcome = (raw) => {
  const r = raw.result;
  return {
    status: r.tag === "status" ? r.val : undefined,
    error: r.tag === "error" ? r.val : undefined,
    skipped: r.tag === "skipped",
    latencyUs: Number(raw.latencyUs),
    endpoint: raw.endpoint,
  };
};

const body = (opts) => {
  const headers = pairs(opts.headers);
  let data = opts.body ?? "";
  if (opts.json !== undefined) {
    data = JSON.stringify(opts.json);
    if (!headers.some((h) => h.name === "content-type")) {
      headers.push({ name: "content-type", value: encoder.encode("application/json") });
    }
  }
  return { headers, body: bytes(data) };
};

/** `continue`: every option defaults to "no change". */
export function proceed(opts = {}) {
  return {
    kind: "proceed",
    setHeaders: pairs(opts.setHeaders),
    removeHeaders: (opts.removeHeaders ?? []).map((n) => n.toLowerCase()),
    path: opts.path,
    query: opts.query,
    upstream: opts.upstream,
    responseHeaders: pairs(opts.responseHeaders),
  };
}

/** Answer the client: `{ body, json, headers }` (`json` sets the type). */
export function respond(status, opts = {}) {
  return { kind: "respond", status, ...body(opts) };
}

/** `continue` in `response`: every option defaults to "no change". */
export function keep(opts = {}) {
  return {
    kind: "keep",
    status: opts.status,
    setHeaders: pairs(opts.setHeaders),
    removeHeaders: (opts.removeHeaders ?? []).map((n) => n.toLowerCase()),
  };
}

/** Replace the response. */
export function replace(status, opts = {}) {
  return { kind: "replace", status, ...body(opts) };
}

const wireResponse = (a) => ({ status: a.status, headers: a.headers, body: a.body });

function requestAction(a = proceed()) {
  if (a.kind === "respond") return { tag: "respond", val: wireResponse(a) };
  if (a.kind !== "proceed") throw new TypeError(`request() returned ${a.kind}, not proceed() or respond()`);
  return {
    tag: "continue",
    val: {
      setHeaders: a.setHeaders,
      removeHeaders: a.removeHeaders,
      path: a.path,
      query: a.query,
      upstream: a.upstream,
      responseHeaders: a.responseHeaders,
    },
  };
}

function responseAction(a = keep()) {
  if (a.kind === "replace") return { tag: "replace", val: wireResponse(a) };
  if (a.kind !== "keep") throw new TypeError(`response() returned ${a.kind}, not keep() or replace()`);
  return { tag: "continue", val: { status: a.status, setHeaders: a.setHeaders, removeHeaders: a.removeHeaders } };
}

/** Refuse with `message` as `init`'s `err`. */
function refuse(message) {
  const e = new Error(message);
  e.payload = message;
  return e;
}

/**
 * The exports componentize-js builds from: `init`, `onRequest`,
 * `onResponse`. `definition` holds `configure(config)` and the hooks it
 * implements, `request(req)` and/or `response(req, outcome, resp)`; they
 * run with `this` bound to one object, kept for the instance's life.
 */
export function definePolicy(definition) {
  let self;
  return {
    init(config) {
      try {
        const parsed = JSON.parse(config);
        if (parsed === null || typeof parsed !== "object" || Array.isArray(parsed)) {
          throw new ConfigError("configuration must be a JSON object");
        }
        self = Object.create(definition);
        definition.configure?.call(self, parsed);
      } catch (e) {
        if (e instanceof ConfigError) throw refuse(e.message);
        throw refuse(`configure threw ${e?.name ?? "an error"}: ${e?.message ?? e}`);
      }
      return { onRequest: typeof definition.request === "function", onResponse: typeof definition.response === "function" };
    },
    onRequest(request) {
      return requestAction(definition.request.call(self, new Request(request)) ?? undefined);
    },
    onResponse(request, out, response) {
      return responseAction(definition.response.call(self, new Request(request), outcome(out), new ResponseHead(response)) ?? undefined);
    },
  };
}

const call = (f) => {
  try {
    return f();
  } catch (e) {
    if (typeof e?.payload === "string") throw new StateError(e.payload);
    throw e;
  }
};
const big = (n) => (n === undefined || n === null ? undefined : BigInt(n));
const num = (n) => (n === undefined || n === null ? undefined : Number(n));

/** Key-value state shared by every instance of this plugin. */
export const state = {
  get(key) { return call(() => wState.get(key))?.value; },
  getEntry(key) {
    const e = call(() => wState.get(key));
    return e && { value: e.value, version: Number(e.version) };
  },
  set(key, value, ttlMs) { return Number(call(() => wState.set(key, bytes(value), big(ttlMs)))); },
  /** The new version when it swapped, else undefined. */
  compareAndSwap(key, expected, value, ttlMs) {
    const r = call(() => wState.compareAndSwap(key, big(expected), bytes(value), big(ttlMs)));
    return r.tag === "swapped" ? Number(r.val) : undefined;
  },
  /** `{ value, ttlMs }` after adding `delta` (a new counter gets `ttlMs`). */
  increment(key, delta = 1, ttlMs) {
    const c = call(() => wState.incrementWithTtl(key, BigInt(delta), big(ttlMs)));
    return { value: Number(c.value), ttlMs: num(c.ttlMs) };
  },
  delete(key) { return call(() => wState.delete(key)); },
  /**
   * Take `cost` tokens from the token bucket `key` (`rate` tokens every
   * `periodMs`, at most `burst`, starting full) in one atomic host call
   * (contract 0.1.5): `{ taken, remaining, resetMs, retryAfterMs }`.
   */
  takeTokens(key, rate, periodMs, burst, cost = 1) {
    const b = call(() => wState.takeTokens(key, BigInt(rate), BigInt(periodMs), BigInt(burst), BigInt(cost)));
    return { taken: b.taken, remaining: Number(b.remaining), resetMs: Number(b.resetMs), retryAfterMs: Number(b.retryAfterMs) };
  },
  /** Count one request in window `key` and say whether it is within `limit`. */
  fixedWindow(key, limit, windowMs) {
    const c = this.increment(key, 1, windowMs);
    return { allowed: c.value <= limit, count: c.value, remaining: Math.max(limit - c.value, 0), resetMs: c.ttlMs ?? windowMs };
  },
};

/** Values kept for the rest of this request (on-request to on-response). */
export const context = {
  get(key) { return wContext.get(key); },
  getText(key) { return text(wContext.get(key)); },
  set(key, value) { return wContext.set(key, bytes(value)); },
};

/** This hook call's span in the request's trace (since contract 0.1.4); a no-op when not recorded. */
export const span = {
  recording() { return wSpan.recording(); },
  setAttribute(key, value) { wSpan.setAttribute(key, String(value)); },
  addEvent(name, attributes) {
    wSpan.addEvent(name, Object.entries(attributes ?? {}).map(([key, value]) => ({ key, value: String(value) })));
  },
};

export const log = Object.fromEntries(
  ["trace", "debug", "info", "warn", "error"].map((level) => [level, (message) => wLog.log(level, String(message))]),
);

const labels = (l) => Object.entries(l ?? {}).map(([name, value]) => ({ name, value: String(value) }));
export const metrics = {
  counter(name, value = 1, l) { wMetrics.counterAdd(name, labels(l), BigInt(value)); },
  histogram(name, value, l) { wMetrics.histogramObserve(name, labels(l), Number(value)); },
};

export const clock = {
  nowMs() { return Number(wClock.nowMs()); },
  monotonicNs() { return wClock.monotonicNs(); },
};

/** The configuration's upstream names, for checking a config in `configure`. */
export function upstreams() { return wGateway.upstreams(); }

/** Reading a config object with errors that name the field. */
export const config = {
  string(c, name, fallback) {
    const v = c[name] ?? fallback;
    if (typeof v !== "string" || (v === "" && fallback === undefined)) throw new ConfigError(`${name}: expected a non-empty string`);
    return v;
  },
  integer(c, name, { fallback, min, max } = {}) {
    const v = c[name] ?? fallback;
    if (!Number.isInteger(v)) throw new ConfigError(`${name}: expected an integer`);
    if (min !== undefined && v < min) throw new ConfigError(`${name}: must be at least ${min}`);
    if (max !== undefined && v > max) throw new ConfigError(`${name}: must be at most ${max}`);
    return v;
  },
  only(c, ...names) {
    for (const key of Object.keys(c)) {
      if (!names.includes(key)) throw new ConfigError(`${key}: unknown field (expected one of ${names.join(", ")})`);
    }
  },
};
