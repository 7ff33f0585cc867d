//! Wicket: an edge API gateway whose every policy is a WebAssembly component.
//!
//! The request path is in [`proxy`]; the plugin contract is `wit/plugin.wit`
//! and its runtime is [`plugin`]; configuration flows from [`config`] (the
//! file's format) to [`snapshot`] (a validated, immutable generation).

pub mod admin;
pub mod body;
pub mod chain;
pub mod cli;
pub mod clock;
pub mod config;
pub mod error;
pub mod gateway;
pub mod grpc;
pub mod metrics;
pub mod plugin;
pub mod proxy;
pub mod reload;
pub mod request;
pub mod router;
pub mod server;
pub mod snapshot;
pub mod state;
pub mod telemetry;
pub mod tunnel;
pub mod upstream;

pub use clock::Clock;
pub use gateway::{Gateway, Options};
