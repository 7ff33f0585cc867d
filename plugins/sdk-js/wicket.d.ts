// Types for the Wicket plugin SDK (wicket.js), contract wicket:plugin@0.1.5.

export type HeaderValue = string | Uint8Array;
export type Headers = Record<string, HeaderValue> | Array<[string, HeaderValue]>;

export class ConfigError extends Error {}
export class StateError extends Error {
  kind: "unavailable" | "too-large" | "not-a-counter";
}

export interface TraceContext { traceId: string; parentId: string; sampled: boolean; traceState?: string }
export interface ClientCertificate { subject: string; sans: string[]; sha256: string }
export interface TlsInfo { serverName?: string; alpn?: string; version: string; clientCertificate?: ClientCertificate }

export class Request {
  readonly method: string;
  readonly scheme: string;
  readonly authority: string;
  readonly path: string;
  readonly query: string | undefined;
  readonly route: string;
  readonly upstream: string;
  readonly clientIp: string;
  readonly clientPort: number;
  readonly requestId: string;
  /** Tries the upstream call made: 1 unless it retried; 0 in onRequest (contract 0.1.3). */
  readonly upstreamAttempts: number;
  readonly trace: TraceContext | undefined;
  readonly tls: TlsInfo | undefined;
  header(name: string): string | undefined;
  headerBytes(name: string): Uint8Array | undefined;
  headerValues(name: string): string[];
  headers(): Array<[string, string]>;
  param(name: string): string | undefined;
  queryParam(name: string): string | undefined;
  cookie(name: string): string | undefined;
}

export class ResponseHead {
  readonly status: number;
  header(name: string): string | undefined;
  headerValues(name: string): string[];
}

export type UpstreamError = "connect-failed" | "timeout" | "reset" | "no-endpoint" | "protocol";
export interface Outcome {
  status?: number;
  error?: UpstreamError;
  skipped: boolean;
  latencyUs: number;
  endpoint?: string;
}

export interface Proceed { kind: "proceed" }
export interface Respond { kind: "respond"; status: number }
export interface Keep { kind: "keep" }
export interface Replace { kind: "replace"; status: number }

export function proceed(opts?: {
  setHeaders?: Headers; removeHeaders?: string[]; path?: string; query?: string;
  upstream?: string; responseHeaders?: Headers;
}): Proceed;
export function respond(status: number, opts?: { body?: string | Uint8Array; json?: unknown; headers?: Headers }): Respond;
export function keep(opts?: { status?: number; setHeaders?: Headers; removeHeaders?: string[] }): Keep;
export function replace(status: number, opts?: { body?: string | Uint8Array; json?: unknown; headers?: Headers }): Replace;

export interface Definition<Self = Record<string, unknown>> {
  configure?(this: Self, config: Record<string, unknown>): void;
  request?(this: Self, req: Request): Proceed | Respond | undefined | void;
  response?(this: Self, req: Request, outcome: Outcome, resp: ResponseHead): Keep | Replace | undefined | void;
}
export function definePolicy<Self>(definition: Definition<Self> & ThisType<Self>): {
  init(config: string): { onRequest: boolean; onResponse: boolean };
  onRequest(request: unknown): unknown;
  onResponse(request: unknown, outcome: unknown, response: unknown): unknown;
};

export interface Counter { value: number; ttlMs?: number }
export interface Window { allowed: boolean; count: number; remaining: number; resetMs: number }
export interface Bucket { taken: boolean; remaining: number; resetMs: number; retryAfterMs: number }
export const state: {
  get(key: string): Uint8Array | undefined;
  getEntry(key: string): { value: Uint8Array; version: number } | undefined;
  set(key: string, value: HeaderValue, ttlMs?: number): number;
  compareAndSwap(key: string, expected: number | undefined, value: HeaderValue, ttlMs?: number): number | undefined;
  increment(key: string, delta?: number, ttlMs?: number): Counter;
  delete(key: string): boolean;
  fixedWindow(key: string, limit: number, windowMs: number): Window;
  takeTokens(key: string, rate: number, periodMs: number, burst: number, cost?: number): Bucket;
};
export const context: {
  get(key: string): Uint8Array | undefined;
  getText(key: string): string | undefined;
  set(key: string, value: HeaderValue): boolean;
};
export const span: {
  recording(): boolean;
  setAttribute(key: string, value: unknown): void;
  addEvent(name: string, attributes?: Record<string, unknown>): void;
};
export const log: Record<"trace" | "debug" | "info" | "warn" | "error", (message: unknown) => void>;
export const metrics: {
  counter(name: string, value?: number, labels?: Record<string, string>): void;
  histogram(name: string, value: number, labels?: Record<string, string>): void;
};
export const clock: { nowMs(): number; monotonicNs(): bigint };
export function upstreams(): string[];
export const config: {
  string(c: Record<string, unknown>, name: string, fallback?: string): string;
  integer(c: Record<string, unknown>, name: string, opts?: { fallback?: number; min?: number; max?: number }): number;
  only(c: Record<string, unknown>, ...names: string[]): void;
};
