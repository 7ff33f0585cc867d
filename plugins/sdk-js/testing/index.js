// Unit-testing a policy in plain Node.js (run with
// `node --import <sdk>/testing/register.js --test`): a fake host, fake
// requests, and the policy's exports called as the gateway calls them, with
// their answers decoded.
export { FakeHost } from "./host.js";

const enc = new TextEncoder();
const dec = new TextDecoder();
const headerList = (h) => Object.entries(h ?? {}).map(([name, value]) => ({ name: name.toLowerCase(), value: enc.encode(value) }));
const headerObject = (list) => Object.fromEntries((list ?? []).map((h) => [h.name, dec.decode(h.value)]));

/** The contract's `request` handle, from plain values. */
export function request({ method = "GET", path = "/", query, headers, authority = "example.test", scheme = "http",
  client = "203.0.113.7:40000", route = "route", upstream = "default", params = {}, requestId = "0123456789abcdef",
  trace, tls, upstreamAttempts = 0 } = {}) {
  const list = headerList(headers);
  const i = client.lastIndexOf(":");
  const ip = client.slice(0, i).replace(/^\[|\]$/g, "");
  return {
    method: () => method, scheme: () => scheme, authority: () => authority, path: () => path, query: () => query,
    header: (n) => list.find((h) => h.name === n)?.value,
    headerValues: (n) => list.filter((h) => h.name === n).map((h) => h.value),
    headers: () => list, clientAddr: () => client, clientIp: () => ip, clientPort: () => Number(client.slice(i + 1)),
    route: () => route, param: (n) => params[n], params: () => Object.entries(params).map(([name, value]) => ({ name, value })),
    upstream: () => upstream, requestId: () => requestId, traceContext: () => trace, tls: () => tls,
    upstreamAttempts: () => upstreamAttempts,
  };
}

/** The contract's `response-head` handle. */
export function responseHead(status = 200, headers) {
  const list = headerList(headers);
  return {
    status: () => status,
    header: (n) => list.find((h) => h.name === n)?.value,
    headerValues: (n) => list.filter((h) => h.name === n).map((h) => h.value),
    headers: () => list,
  };
}

const decode = (action) => {
  if (action.tag === "respond" || action.tag === "replace") {
    const r = action.val;
    const body = dec.decode(r.body);
    return { kind: action.tag, status: r.status, headers: headerObject(r.headers), body, json: () => JSON.parse(body) };
  }
  const p = action.val;
  return {
    kind: "continue", status: p.status, setHeaders: headerObject(p.setHeaders), removeHeaders: p.removeHeaders,
    path: p.path, query: p.query, upstream: p.upstream, responseHeaders: headerObject(p.responseHeaders),
  };
};

/**
 * `init` the policy's exports with `config` as the gateway would. Throws
 * the refusal message for a config `init` refuses. Returns the declared
 * hooks and callers that take plain values and decode the answers.
 */
export function load(exports, config = {}) {
  let hooks;
  try {
    hooks = exports.init(JSON.stringify(config));
  } catch (e) {
    if (typeof e?.payload === "string") throw new Error(e.payload);
    throw e;
  }
  return {
    hooks,
    request: (opts) => decode(exports.onRequest(request(opts))),
    response: (opts, outcome = { result: { tag: "status", val: 200 }, latencyUs: 0n }, status = 200, headers = {}) =>
      decode(exports.onResponse(request(opts), outcome, responseHead(status, headers))),
  };
}
