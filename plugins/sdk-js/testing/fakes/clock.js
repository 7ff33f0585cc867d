// The fake `wicket:plugin/clock`: every call goes to the current FakeHost.
import { host } from "../host.js";

export const nowMs = () => BigInt(host().nowMs);
export const monotonicNs = () => BigInt(host().nowMs) * 1000000n;
