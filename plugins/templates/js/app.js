// A Wicket policy: refuse requests that lack a required header.
//
// Config: {"header": "x-tenant"}. Replace this with your policy: `configure`
// checks the route's config, `request` decides on each request (and
// `response`, if you add it, on each response). See docs/plugins/javascript.md.
import * as wicket from "../../sdk-js/wicket.js";

export const { init, onRequest, onResponse } = wicket.definePolicy({
  configure(config) {
    wicket.config.only(config, "header");
    this.header = wicket.config.string(config, "header").toLowerCase();
  },

  request(req) {
    if (req.header(this.header) === undefined) {
      wicket.metrics.counter("refused_total", 1, { route: req.route });
      return wicket.respond(400, {
        json: { error: "missing_header", message: `the ${this.header} header is required` },
      });
    }
    return wicket.proceed();
  },
});
