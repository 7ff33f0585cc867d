// Unit tests in plain Node.js:
// `node --import ../../../sdk-js/testing/register.js --test` in this directory.
import { test } from "node:test";
import assert from "node:assert/strict";
import { FakeHost, load } from "../../../sdk-js/testing/index.js";
import * as app from "./app.js";

test("counts, then refuses until the window ends", () => {
  const host = new FakeHost();
  const policy = load(app, { limit: 2, window_seconds: 60 });
  const call = () => policy.request({ client: "198.51.100.1:5000" });
  assert.equal(call().responseHeaders["x-ratelimit-remaining"], "1");
  assert.equal(call().responseHeaders["x-ratelimit-remaining"], "0");
  host.advance(15_000);
  const refused = call();
  assert.equal(refused.status, 429);
  assert.equal(refused.headers["retry-after"], "45");
  host.advance(45_000);
  assert.equal(call().responseHeaders["x-ratelimit-remaining"], "1");
});

test("lets traffic through when the store is down", () => {
  const host = new FakeHost();
  const policy = load(app, { limit: 2, window_seconds: 60 });
  host.unavailable = true;
  assert.deepEqual(policy.request({}).responseHeaders, {});
});
