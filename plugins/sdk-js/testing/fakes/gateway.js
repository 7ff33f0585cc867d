// The fake `wicket:plugin/gateway`: every call goes to the current FakeHost.
import { host } from "../host.js";

export const upstreams = () => [...host().upstreams];
