// The fake `wicket:plugin/state`: every call goes to the current FakeHost.
import { host } from "../host.js";

export const get = (k) => host().state.get(k);
export const set = (k, v, t) => host().state.set(k, v, t);
export const compareAndSwap = (k, e, v, t) => host().state.compareAndSwap(k, e, v, t);
export const increment = (k, d, t) => host().state.incrementWithTtl(k, d, t).value;
export const incrementWithTtl = (k, d, t) => host().state.incrementWithTtl(k, d, t);
export const takeTokens = (k, r, p, b, c) => host().state.takeTokens(k, r, p, b, c);
const del = (k) => host().state.delete(k);
export { del as delete };
