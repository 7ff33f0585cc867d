// Test program: leaks on purpose. Every request keeps 64 KiB alive for the
// instance's life, so its heap creeps up until the gateway recycles the
// instance; `x-alloc-mb: <n>` allocates n MiB at once, for a grow past the
// cap. Sets `x-leaked-kib` to what this instance holds.
import * as wicket from "../../../sdk-js/wicket.js";

const kept = [];

export const { init, onRequest, onResponse } = wicket.definePolicy({
  request(req) {
    const big = Number(req.header("x-alloc-mb") ?? 0);
    if (big > 0) {
      const buf = new Uint8Array(big * 1024 * 1024);
      buf.fill(1);
      kept.push(buf);
    }
    const chunk = new Uint8Array(64 * 1024);
    chunk.fill(kept.length & 0xff);
    kept.push(chunk);
    return wicket.proceed({ setHeaders: { "x-leaked-kib": String(kept.length * 64) } });
  },
});
