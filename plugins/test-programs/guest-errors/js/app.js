// Test program: `configure` throws a plain TypeError when the config is
// {"raise": "<message>"} (the SDK turns it into `init`'s error: raw
// componentize-js cannot encode a thrown Error as one); `request` throws a
// RangeError when the request has `x-raise: <message>`. The gateway must
// report the guest's own words, and never put them in a client's body.
import * as wicket from "../../../sdk-js/wicket.js";

export const { init, onRequest, onResponse } = wicket.definePolicy({
  configure(config) {
    if (config.raise) throw new TypeError(config.raise);
  },

  request(req) {
    const message = req.header("x-raise");
    if (message !== undefined) throw new RangeError(message);
    return wicket.proceed();
  },
});
