//! Test guest `noop.wasm`: a plugin that does nothing, using only the SDK's
//! default hooks (continue with an empty patch; keep the response).
//!
//! Used to measure the per-hook cost of the plugin machinery itself, e.g. a
//! benchmark chain of three no-ops. Any configuration is accepted and ignored,
//! so benchmarks can attach it without a `config`.

use wicket_plugin_sdk::{export_plugin, Plugin};

struct Noop;

impl Plugin for Noop {
    fn init(_config: &str) -> Result<Self, String> {
        Ok(Noop)
    }
}

export_plugin!(Noop);
