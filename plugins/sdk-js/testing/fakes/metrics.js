// The fake `wicket:plugin/metrics`: every call goes to the current FakeHost.
import { host } from "../host.js";

export const counterAdd = (name, labels, value) => host().counter(name, labels, value);
export const histogramObserve = (name, labels, value) => host().histogram(name, labels, value);
