"""Test program: leaks on purpose. Every request keeps 64 KiB alive for the
instance's life, so its heap creeps up until the gateway recycles the
instance; `x-alloc-mb: <n>` allocates n MiB at once, for a grow past the
cap. Sets `x-leaked-kib` to what this instance holds."""

import wicket

kept = []


class Leaky(wicket.Policy):
    def request(self, req):
        big = int(req.header("x-alloc-mb") or 0)
        if big > 0:
            kept.append(bytearray(big * 1024 * 1024))
        kept.append(bytearray(64 * 1024))
        return wicket.proceed(set_headers={"x-leaked-kib": str(len(kept) * 64)})


WitWorld = wicket.export(Leaky)
