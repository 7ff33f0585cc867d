// The fake `wicket:plugin/span`: every call goes to the current FakeHost.
import { host } from "../host.js";

export const recording = () => true;
export const setAttribute = (k, v) => host().spanNotes.push(["attribute", k, v]);
export const addEvent = (n, a) => host().spanNotes.push(["event", n, a]);
