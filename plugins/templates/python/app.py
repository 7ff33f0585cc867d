"""A Wicket policy: refuse requests that lack a required header.

Config: {"header": "x-tenant"}. Replace this with your policy: `configure`
checks the route's config, `request` decides on each request (and
`response`, if you add it, on each response). See docs/plugins/python.md.
"""

import wicket


class RequireHeader(wicket.Policy):
    def configure(self, config):
        wicket.config.only(config, "header")
        self.header = wicket.config.string(config, "header").lower()

    def request(self, req):
        if req.header(self.header) is None:
            wicket.metrics.counter("refused_total", route=req.route)
            return wicket.respond(400, json={
                "error": "missing_header",
                "message": f"the {self.header} header is required",
            })
        return wicket.proceed()


WitWorld = wicket.export(RequireHeader)
