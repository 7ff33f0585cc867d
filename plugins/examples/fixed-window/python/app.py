"""Example plugin, alike in Rust, Python and JavaScript and held to one spec
(`../spec.yaml`): a fixed window limit per client, counted in the shared
state so every instance counts together.

Config: {"limit": 100, "window_seconds": 60, "key": "client-ip"}; `key` is
`client-ip` (the default) or `header:<name>` (a request without the header
is counted by its client IP).
"""

import wicket


class FixedWindow(wicket.Policy):
    def configure(self, config):
        wicket.config.only(config, "limit", "window_seconds", "key")
        self.limit = wicket.config.integer(config, "limit", minimum=1)
        self.window_ms = wicket.config.integer(config, "window_seconds", minimum=1) * 1000
        key = config.get("key", "client-ip")
        if key == "client-ip":
            self.header = None
        elif isinstance(key, str) and key.startswith("header:") and len(key) > 7:
            self.header = key[7:].lower()
        else:
            raise wicket.ConfigError(f"key: {key!r} is neither client-ip nor header:<name>")

    def request(self, req):
        who = (req.header(self.header) if self.header else None) or req.client_ip
        try:
            window = wicket.state.fixed_window(f"w:{who}", self.limit, self.window_ms)
        except wicket.StateError:
            # The store is down: let traffic through rather than refuse all.
            return wicket.proceed()
        limit = str(self.limit)
        if not window.allowed:
            retry = -(-window.reset_ms // 1000)
            return wicket.respond(429, json={"error": "rate_limited", "retry_after": retry}, headers={
                "retry-after": str(retry),
                "x-ratelimit-limit": limit,
                "x-ratelimit-remaining": "0",
            })
        return wicket.proceed(response_headers={
            "x-ratelimit-limit": limit,
            "x-ratelimit-remaining": str(window.remaining),
        })


WitWorld = wicket.export(FixedWindow)
