// Example plugin, alike in Rust, Python and JavaScript and held to one spec
// (`../spec.yaml`): refuse a request that carries a configured header.
//
// Config: {"header": "x-debug", "status": 403} (`status` optional, a 4xx).
import * as wicket from "../../../sdk-js/wicket.js";

export const { init, onRequest, onResponse } = wicket.definePolicy({
  configure(config) {
    wicket.config.only(config, "header", "status");
    this.header = wicket.config.string(config, "header").toLowerCase();
    this.status = config.status ?? 403;
    if (!Number.isInteger(this.status) || this.status < 400 || this.status > 499) {
      throw new wicket.ConfigError(`status: ${JSON.stringify(this.status)} is not a 4xx status`);
    }
  },

  request(req) {
    if (req.header(this.header) === undefined) return wicket.proceed();
    return wicket.respond(this.status, {
      json: { error: "denied", reason: `${this.header} is not allowed` },
    });
  },
});
