//! The end-to-end suite, one test binary: every module starts real gateways
//! on `127.0.0.1:0` with real compiled plugins and echo backends. One binary
//! links once instead of once per file.

mod admin_page;
mod admin_state;
mod cancellation;
mod config;
mod contract;
mod grpc;
mod languages;
mod limits;
mod module_cache;
mod observability;
mod policy_auth;
mod policy_chain;
mod policy_limits;
mod policy_resilience;
mod policy_split;
mod proxy;
mod reload;
mod serve;
mod state;
mod tls;
mod traces;
mod trust;
mod upstreams;
mod websocket;
