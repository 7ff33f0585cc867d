// Unit tests in plain Node.js, no gateway needed: `./build` runs them with
// `node --import <sdk>/testing/register.js --test`.
import { test } from "node:test";
import assert from "node:assert/strict";
import { FakeHost, load } from "../../sdk-js/testing/index.js";
import * as app from "./app.js";

test("a request with the header passes", () => {
  new FakeHost();
  const policy = load(app, { header: "X-Tenant" });
  assert.equal(policy.request({ headers: { "x-tenant": "acme" } }).kind, "continue");
});

test("a request without it is refused", () => {
  new FakeHost();
  const action = load(app, { header: "X-Tenant" }).request({});
  assert.equal(action.status, 400);
  assert.equal(action.json().error, "missing_header");
});

test("the config must name the header", () => {
  new FakeHost();
  assert.throws(() => load(app, {}), /header/);
});
