// Module resolution for unit tests: the contract's imports become fakes.
export async function resolve(specifier, context, next) {
  const m = /^wicket:plugin\/([a-z-]+)(@[0-9.]+)?$/.exec(specifier);
  if (m) {
    return { url: new URL(`./fakes/${m[1]}.js`, import.meta.url).href, shortCircuit: true };
  }
  return next(specifier, context);
}
