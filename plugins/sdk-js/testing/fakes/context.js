// The fake `wicket:plugin/context`: every call goes to the current FakeHost.
import { host } from "../host.js";

export const get = (k) => host().context.get(k);
export const set = (k, v) => host().context.set(k, v);
