// The SDK's own tests with the fake host:
// `node --import ./testing/register.js --test test/` in plugins/sdk-js
// (scripts/test runs them).
import { test } from "node:test";
import assert from "node:assert/strict";
import { state, StateError } from "../wicket.js";
import { FakeHost } from "../testing/index.js";

test("take-tokens allows the burst, then refuses with the waits", () => {
  new FakeHost();
  for (const left of [2, 1, 0]) {
    const b = state.takeTokens("k", 10, 1000, 3);
    assert.equal(b.taken, true);
    assert.deepEqual([b.remaining, b.retryAfterMs], [left, 0]);
  }
  const b = state.takeTokens("k", 10, 1000, 3);
  assert.deepEqual(b, { taken: false, remaining: 0, resetMs: 300, retryAfterMs: 100 });
});

test("take-tokens refills exactly and takes a cost whole or not at all", () => {
  const host = new FakeHost();
  assert.equal(state.takeTokens("k", 1, 3000, 4, 4).remaining, 0);
  host.advance(2999);
  assert.equal(state.takeTokens("k", 1, 3000, 4).taken, false);
  host.advance(1);
  const b = state.takeTokens("k", 1, 3000, 4, 2);
  assert.deepEqual([b.taken, b.remaining, b.retryAfterMs], [false, 1, 3000]);
  assert.equal(state.takeTokens("k", 1, 3000, 4).taken, true);
});

test("take-tokens refuses limits the host refuses, and an unavailable store throws", () => {
  const host = new FakeHost();
  for (const args of [[0, 1000, 5], [1, 1000, 5, 6], [1, 2 ** 40, 2 ** 20]]) {
    assert.throws(() => state.takeTokens("k", ...args), (e) => e instanceof StateError && e.kind === "too-large");
  }
  host.unavailable = true;
  assert.throws(() => state.takeTokens("k", 1, 1000, 1), StateError);
});
