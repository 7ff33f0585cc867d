// The fake `wicket:plugin/log`: every call goes to the current FakeHost.
import { host } from "../host.js";

export const log = (level, message) => host().logs.push([level, message]);
