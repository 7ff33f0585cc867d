// The FakeHost the fakes in `fakes/` answer from.
let current;

export function host() {
  if (!current) throw new Error("create a FakeHost before calling the policy");
  return current;
}

const stateError = (kind) => {
  const e = new Error(kind);
  e.payload = kind;
  return e;
};

/** State with TTLs on a clock that moves only with `advance`, and records of logs and metrics. */
export class FakeHost {
  constructor({ nowMs = 1_700_000_000_000, upstreams = ["default"] } = {}) {
    this.nowMs = nowMs;
    this.upstreams = [...upstreams].sort();
    this.entries = new Map();
    this.version = 0n;
    this.contextValues = new Map();
    // What the plugin added to its span: ["attribute", key, value] or ["event", name, attributes].
    this.spanNotes = [];
    this.logs = [];
    this.counters = new Map();
    this.unavailable = false;
    const self = this;
    this.state = {
      get(k) { self.#check(); const e = self.#live(k); return e && { value: e.value, version: e.version }; },
      set(k, v, t) { self.#check(); return self.#write(k, v, t === undefined ? undefined : self.nowMs + Number(t)); },
      compareAndSwap(k, expected, v, t) {
        self.#check();
        const e = self.#live(k);
        if ((e?.version) !== expected) return { tag: "conflict", val: e && { value: e.value, version: e.version } };
        return { tag: "swapped", val: this.set(k, v, t) };
      },
      incrementWithTtl(k, d, t) {
        self.#check();
        const e = self.#live(k);
        let current = 0n;
        let expires = t === undefined ? undefined : self.nowMs + Number(t);
        if (e) {
          if (e.value.length !== 8) throw stateError("not-a-counter");
          current = new DataView(e.value.buffer, e.value.byteOffset, 8).getBigInt64(0, true);
          expires = e.expires;
        }
        const value = current + d;
        const buf = new Uint8Array(8);
        new DataView(buf.buffer).setBigInt64(0, value, true);
        self.#write(k, buf, expires);
        return { value, ttlMs: expires === undefined ? undefined : BigInt(expires - self.nowMs) };
      },
      delete(k) { self.#check(); const had = !!self.#live(k); self.entries.delete(k); return had; },
      // The host's arithmetic (gateway/src/state/bucket.rs): tokens counted in
      // 1/periodMs units, refilled exactly; a refusal writes nothing.
      takeTokens(k, rate, periodMs, burst, cost) {
        const ceil = (n, d) => (n + d - 1n) / d;
        if (rate < 1n || periodMs < 1n || burst < 1n || cost > burst || burst * periodMs + rate >= 1n << 53n) {
          throw stateError("too-large");
        }
        self.#check();
        const cap = burst * periodMs, need = cost * periodMs, now = BigInt(self.nowMs);
        const ttl = ceil(cap, rate) > 1n ? ceil(cap, rate) : 1n;
        const e = self.#live(k);
        let units = cap, last = now;
        if (e && e.value.length === 17 && e.value[0] === 1) {
          const view = new DataView(e.value.buffer, e.value.byteOffset, 17);
          const stored = view.getBigUint64(9, true);
          let elapsed = now > stored ? now - stored : 0n;
          if (elapsed > ttl) elapsed = ttl;
          const had = view.getBigUint64(1, true);
          units = (had < cap ? had : cap) + elapsed * rate;
          if (units > cap) units = cap;
          last = stored > now ? stored : now;
        }
        const taken = units >= need;
        if (taken) {
          units -= need;
          const buf = new Uint8Array(17);
          buf[0] = 1;
          const view = new DataView(buf.buffer);
          view.setBigUint64(1, units, true);
          view.setBigUint64(9, last, true);
          self.#write(k, buf, self.nowMs + Number(ttl));
        }
        return { taken, remaining: units / periodMs, resetMs: ceil(cap - units, rate), retryAfterMs: taken ? 0n : ceil(need - units, rate) };
      },
    };
    this.context = {
      get: (k) => self.contextValues.get(k),
      set(k, v) {
        let bytes = k.length + v.length, keys = 1;
        for (const [key, value] of self.contextValues) if (key !== k) { keys++; bytes += key.length + value.length; }
        if (keys > 16 || bytes > 4096) return false;
        self.contextValues.set(k, v);
        return true;
      },
    };
    current = this;
  }
  advance(ms) { this.nowMs += ms; }
  newRequest() { this.contextValues.clear(); }
  counter(name, labels, value) {
    const key = JSON.stringify([name, labels]);
    this.counters.set(key, (this.counters.get(key) ?? 0n) + value);
  }
  histogram() {}
  #check() { if (this.unavailable) throw stateError("unavailable"); }
  #live(k) {
    const e = this.entries.get(k);
    if (e && e.expires !== undefined && e.expires <= this.nowMs) { this.entries.delete(k); return undefined; }
    return e;
  }
  #write(k, value, expires) {
    this.version += 1n;
    this.entries.set(k, { value, version: this.version, expires });
    return this.version;
  }
}
