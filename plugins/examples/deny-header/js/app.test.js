// Unit tests in plain Node.js:
// `node --import ../../../sdk-js/testing/register.js --test` in this directory.
import { test } from "node:test";
import assert from "node:assert/strict";
import { FakeHost, load } from "../../../sdk-js/testing/index.js";
import * as app from "./app.js";

test("passes a request without the header", () => {
  new FakeHost();
  const policy = load(app, { header: "X-Debug" });
  assert.deepEqual(policy.hooks, { onRequest: true, onResponse: false });
  assert.equal(policy.request({ headers: { "x-other": "1" } }).kind, "continue");
});

test("refuses a request with the header", () => {
  new FakeHost();
  const action = load(app, { header: "X-Debug" }).request({ headers: { "x-debug": "1" } });
  assert.equal(action.status, 403);
  assert.equal(action.headers["content-type"], "application/json");
  assert.equal(action.json().error, "denied");
});

test("refuses bad configs, naming the field", () => {
  new FakeHost();
  assert.throws(() => load(app, {}), /header/);
  assert.throws(() => load(app, { header: "x", status: 200 }), /status/);
});
