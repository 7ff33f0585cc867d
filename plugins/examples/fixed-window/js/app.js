// Example plugin, alike in Rust, Python and JavaScript and held to one spec
// (`../spec.yaml`): a fixed window limit per client, counted in the shared
// state so every instance counts together.
//
// Config: {"limit": 100, "window_seconds": 60, "key": "client-ip"}; `key` is
// `client-ip` (the default) or `header:<name>` (a request without the header
// is counted by its client IP).
import * as wicket from "../../../sdk-js/wicket.js";

export const { init, onRequest, onResponse } = wicket.definePolicy({
  configure(config) {
    wicket.config.only(config, "limit", "window_seconds", "key");
    this.limit = wicket.config.integer(config, "limit", { min: 1 });
    this.windowMs = wicket.config.integer(config, "window_seconds", { min: 1 }) * 1000;
    const key = config.key ?? "client-ip";
    if (key === "client-ip") {
      this.header = undefined;
    } else if (typeof key === "string" && key.startsWith("header:") && key.length > 7) {
      this.header = key.slice(7).toLowerCase();
    } else {
      throw new wicket.ConfigError(`key: ${JSON.stringify(key)} is neither client-ip nor header:<name>`);
    }
  },

  request(req) {
    const who = (this.header && req.header(this.header)) || req.clientIp;
    let window;
    try {
      window = wicket.state.fixedWindow(`w:${who}`, this.limit, this.windowMs);
    } catch (e) {
      // The store is down: let traffic through rather than refuse all.
      if (e instanceof wicket.StateError) return wicket.proceed();
      throw e;
    }
    const limit = String(this.limit);
    if (!window.allowed) {
      const retry = Math.ceil(window.resetMs / 1000);
      return wicket.respond(429, {
        json: { error: "rate_limited", retry_after: retry },
        headers: { "retry-after": String(retry), "x-ratelimit-limit": limit, "x-ratelimit-remaining": "0" },
      });
    }
    return wicket.proceed({
      responseHeaders: { "x-ratelimit-limit": limit, "x-ratelimit-remaining": String(window.remaining) },
    });
  },
});
