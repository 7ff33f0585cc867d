"""Example plugin, alike in Rust, Python and JavaScript and held to one spec
(`../spec.yaml`): refuse a request that carries a configured header.

Config: {"header": "x-debug", "status": 403} (`status` optional, a 4xx).
"""

import wicket


class DenyHeader(wicket.Policy):
    def configure(self, config):
        wicket.config.only(config, "header", "status")
        self.header = wicket.config.string(config, "header").lower()
        self.status = config.get("status", 403)
        if not isinstance(self.status, int) or not 400 <= self.status <= 499:
            raise wicket.ConfigError(f"status: {self.status!r} is not a 4xx status")

    def request(self, req):
        if req.header(self.header) is None:
            return wicket.proceed()
        return wicket.respond(self.status, json={
            "error": "denied",
            "reason": f"{self.header} is not allowed",
        })


WitWorld = wicket.export(DenyHeader)
