//! Test guest `chaos.wasm`: misbehaves on demand so host tests can check every
//! limit and failure path (traps, deadlines, memory cap, output validation,
//! short-circuits, onion order).
//!
//! Config: `{"default": "<mode>", "tag": "<string>"}`, both optional, unknown
//! fields refused. `default` (default `"continue"`) is the mode used when the
//! request has no `x-chaos` header; `tag` names this chain position.
//!
//! `on-request` mode, from the request header `x-chaos` or else `default`:
//! - `continue`: continue, setting upstream headers `x-chaos-instance: <id>`,
//!   `x-chaos-tag: <tag>` and `x-chain: <current>,<tag>` (the last two only
//!   with a tag), plus the response header `x-chaos-instance: <id>`. `<id>` is
//!   unique per instance (from the state counter `instance-ids` at init), so a
//!   test can see a trapped instance replaced by a fresh one.
//! - `trap`: panic, i.e. a wasm trap.
//! - `loop`: spin forever (hits the CPU deadline).
//! - `memory`: allocate and touch ~1 GiB in 1 MiB chunks (hits the memory cap).
//! - `respond-<status>`: answer with `<status>` (any u16, so invalid statuses
//!   can be tried too) and body `{"plugin":"chaos","tag":<tag or null>}`.
//! - `bad-header`: continue setting a header named `bad name` with value
//!   `x\r\ny` (the host must reject it).
//! - `big-body`: answer 200 with a 4 MiB body (over the host's body cap).
//! - `many-headers`: continue with 10 000 set headers (over the header cap).
//!
//! An unknown mode answers 400 `{"error":"unknown_chaos_mode",...}`.
//!
//! `on-response`: if the request header `x-chaos-response` is present, it names
//! a mode applied the same way (`respond-<status>` and `big-body` replace the
//! response; `bad-header` and `many-headers` patch it). Otherwise (or with
//! `continue`) it appends the tag to the response header `x-chain-response`, so
//! a chain of tagged instances shows the reverse (onion) order.

use std::str::FromStr;

use serde::Deserialize;
use wicket_plugin_sdk::{
    export_plugin, state, Header, Plugin, Request, RequestAction, RequestPatch, Response,
    ResponseAction, ResponseHead, ResponsePatch, UpstreamOutcome,
};

const MIB: usize = 1 << 20;
/// Enough to exceed any sane guest memory cap (wasm32 tops out at 4 GiB).
const MEMORY_CHUNKS: usize = 1024;
const BIG_BODY_BYTES: usize = 4 * MIB;
const MANY_HEADERS: usize = 10_000;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    #[serde(default = "default_mode")]
    default: String,
    tag: Option<String>,
}

fn default_mode() -> String {
    "continue".to_string()
}

/// One way to behave in a hook.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    Continue,
    Trap,
    Loop,
    /// Sleep for a second: an `await` in the host (the WASI clock), during
    /// which the guest runs no code and so burns no epoch ticks.
    Sleep,
    Memory,
    Respond(u16),
    BadHeader,
    BigBody,
    ManyHeaders,
}

impl FromStr for Mode {
    type Err = String;

    fn from_str(s: &str) -> Result<Mode, String> {
        Ok(match s {
            "continue" => Mode::Continue,
            "trap" => Mode::Trap,
            "loop" => Mode::Loop,
            "sleep" => Mode::Sleep,
            "memory" => Mode::Memory,
            "bad-header" => Mode::BadHeader,
            "big-body" => Mode::BigBody,
            "many-headers" => Mode::ManyHeaders,
            _ => match s.strip_prefix("respond-").map(str::parse) {
                Some(Ok(status)) => Mode::Respond(status),
                _ => return Err(format!("unknown chaos mode {s:?}")),
            },
        })
    }
}

struct Chaos {
    default: Mode,
    tag: Option<String>,
    instance: i64,
}

impl Chaos {
    /// Build from the configuration text and this instance's unique id.
    fn from_config(config: &str, instance: i64) -> Result<Chaos, String> {
        let config: Config =
            serde_json::from_str(config).map_err(|e| format!("invalid configuration: {e}"))?;
        let default = config
            .default
            .parse()
            .map_err(|e| format!("default: {e}"))?;
        Ok(Chaos {
            default,
            tag: config.tag,
            instance,
        })
    }

    /// The `continue` patch: identify the instance and record the chain order.
    fn continue_patch(&self, chain: Option<&str>) -> RequestPatch {
        let id = self.instance.to_string();
        let mut patch = RequestPatch::default()
            .set_header("x-chaos-instance", &id)
            .response_header("x-chaos-instance", &id);
        if let Some(tag) = &self.tag {
            patch = patch
                .set_header("x-chaos-tag", tag)
                .set_header("x-chain", append_tag(chain, tag));
        }
        patch
    }

    /// The response patch of a response-phase `continue`.
    fn response_chain_patch(&self, chain: Option<&str>) -> ResponsePatch {
        match &self.tag {
            Some(tag) => {
                ResponsePatch::default().set_header("x-chain-response", append_tag(chain, tag))
            }
            None => ResponsePatch::default(),
        }
    }

    /// The short-circuit answer of `respond-<status>`.
    fn respond(&self, status: u16) -> Response {
        let body = serde_json::json!({ "plugin": "chaos", "tag": self.tag });
        Response::json(status, &body.to_string())
    }
}

/// `current,tag`, or just `tag` when the header is absent.
fn append_tag(current: Option<&str>, tag: &str) -> String {
    match current {
        Some(current) if !current.is_empty() => format!("{current},{tag}"),
        _ => tag.to_string(),
    }
}

/// A header the host must refuse: a space in the name, CR LF in the value.
fn bad_header() -> Header {
    Header {
        name: "bad name".to_string(),
        value: b"x\r\ny".to_vec(),
    }
}

fn many_headers() -> Vec<Header> {
    (0..MANY_HEADERS)
        .map(|i| wicket_plugin_sdk::header(&format!("x-chaos-{i}"), "1"))
        .collect()
}

fn big_body() -> Response {
    Response {
        status: 200,
        headers: Vec::new(),
        body: vec![b'x'; BIG_BODY_BYTES],
    }
}

fn unknown_mode(error: &str) -> Response {
    let body = serde_json::json!({ "error": "unknown_chaos_mode", "message": error });
    Response::json(400, &body.to_string())
}

fn trap() -> ! {
    panic!("chaos: trap requested");
}

/// Spin until the host's deadline stops us; `black_box` keeps the loop from
/// being optimised into nothing.
fn spin() -> ! {
    let mut n = 0u64;
    loop {
        n = std::hint::black_box(n).wrapping_add(1);
    }
}

/// Allocate and write ~1 GiB, keeping every chunk alive, so the host's memory
/// cap is hit (an allocation failure aborts, which also traps).
fn exhaust_memory() {
    let mut chunks = Vec::new();
    for i in 0..MEMORY_CHUNKS {
        // A non-zero fill forces every page to be written, not just reserved.
        chunks.push(std::hint::black_box(vec![(i as u8) | 1; MIB]));
    }
    std::hint::black_box(&chunks);
}

impl Plugin for Chaos {
    fn init(config: &str) -> Result<Self, String> {
        // Obtained once per instance: a replacement instance gets a new id.
        let instance = state::increment("instance-ids", 1, None)
            .map_err(|e| format!("instance-ids: state error {e:?}"))?;
        Chaos::from_config(config, instance)
    }

    fn on_request(&self, request: &Request) -> RequestAction {
        let mode = match request.header_str("x-chaos").map(|m| m.parse()) {
            None => self.default,
            Some(Ok(mode)) => mode,
            Some(Err(e)) => return RequestAction::Respond(unknown_mode(&e)),
        };
        match mode {
            Mode::Continue => RequestAction::Continue(
                self.continue_patch(request.header_str("x-chain").as_deref()),
            ),
            Mode::Trap => trap(),
            Mode::Loop => spin(),
            Mode::Sleep => {
                std::thread::sleep(std::time::Duration::from_secs(1));
                RequestAction::Continue(RequestPatch::default())
            }
            Mode::Memory => {
                exhaust_memory();
                RequestAction::Continue(RequestPatch::default())
            }
            Mode::Respond(status) => RequestAction::Respond(self.respond(status)),
            Mode::BadHeader => RequestAction::Continue(RequestPatch {
                set_headers: vec![bad_header()],
                ..RequestPatch::default()
            }),
            Mode::BigBody => RequestAction::Respond(big_body()),
            Mode::ManyHeaders => RequestAction::Continue(RequestPatch {
                set_headers: many_headers(),
                ..RequestPatch::default()
            }),
        }
    }

    fn on_response(
        &self,
        request: &Request,
        _outcome: &UpstreamOutcome,
        response: &ResponseHead,
    ) -> ResponseAction {
        let mode = match request.header_str("x-chaos-response").map(|m| m.parse()) {
            None => Mode::Continue,
            Some(Ok(mode)) => mode,
            Some(Err(e)) => return ResponseAction::Replace(unknown_mode(&e)),
        };
        match mode {
            Mode::Continue => {
                let chain = response.header_str("x-chain-response");
                ResponseAction::Continue(self.response_chain_patch(chain.as_deref()))
            }
            Mode::Trap => trap(),
            Mode::Loop => spin(),
            Mode::Sleep => {
                std::thread::sleep(std::time::Duration::from_secs(1));
                ResponseAction::Continue(ResponsePatch::default())
            }
            Mode::Memory => {
                exhaust_memory();
                ResponseAction::Continue(ResponsePatch::default())
            }
            Mode::Respond(status) => ResponseAction::Replace(self.respond(status)),
            Mode::BadHeader => ResponseAction::Continue(ResponsePatch {
                set_headers: vec![bad_header()],
                ..ResponsePatch::default()
            }),
            Mode::BigBody => ResponseAction::Replace(big_body()),
            Mode::ManyHeaders => ResponseAction::Continue(ResponsePatch {
                set_headers: many_headers(),
                ..ResponsePatch::default()
            }),
        }
    }
}

export_plugin!(Chaos);

#[cfg(test)]
mod tests {
    use super::*;

    fn value<'a>(headers: &'a [Header], name: &str) -> Option<&'a [u8]> {
        headers
            .iter()
            .find(|h| h.name == name)
            .map(|h| h.value.as_slice())
    }

    #[test]
    fn modes_parse() {
        assert_eq!("continue".parse(), Ok(Mode::Continue));
        assert_eq!("trap".parse(), Ok(Mode::Trap));
        assert_eq!("loop".parse(), Ok(Mode::Loop));
        assert_eq!("memory".parse(), Ok(Mode::Memory));
        assert_eq!("respond-418".parse(), Ok(Mode::Respond(418)));
        assert_eq!("bad-header".parse(), Ok(Mode::BadHeader));
        assert_eq!("big-body".parse(), Ok(Mode::BigBody));
        assert_eq!("many-headers".parse(), Ok(Mode::ManyHeaders));
        assert!("respond-x".parse::<Mode>().is_err());
        assert!("explode".parse::<Mode>().is_err());
    }

    #[test]
    fn config_defaults_to_continue_without_tag() {
        let chaos = Chaos::from_config("{}", 1).unwrap();
        assert_eq!(chaos.default, Mode::Continue);
        assert_eq!(chaos.tag, None);
    }

    #[test]
    fn config_rejects_unknown_mode_and_fields() {
        let err = Chaos::from_config(r#"{"default": "explode"}"#, 1)
            .err()
            .unwrap();
        assert!(err.starts_with("default:"), "{err}");
        assert!(Chaos::from_config(r#"{"other": 1}"#, 1).is_err());
    }

    #[test]
    fn tag_appended_or_set() {
        assert_eq!(append_tag(None, "b"), "b");
        assert_eq!(append_tag(Some(""), "b"), "b");
        assert_eq!(append_tag(Some("a"), "b"), "a,b");
    }

    #[test]
    fn continue_patch_identifies_instance_and_chain() {
        let chaos = Chaos::from_config(r#"{"tag": "b"}"#, 42).unwrap();
        let patch = chaos.continue_patch(Some("a"));
        assert_eq!(
            value(&patch.set_headers, "x-chaos-instance"),
            Some(&b"42"[..])
        );
        assert_eq!(value(&patch.set_headers, "x-chaos-tag"), Some(&b"b"[..]));
        assert_eq!(value(&patch.set_headers, "x-chain"), Some(&b"a,b"[..]));
        assert_eq!(
            value(&patch.response_headers, "x-chaos-instance"),
            Some(&b"42"[..])
        );
    }

    #[test]
    fn untagged_continue_leaves_chain_alone() {
        let chaos = Chaos::from_config("{}", 3).unwrap();
        let patch = chaos.continue_patch(Some("a"));
        assert_eq!(value(&patch.set_headers, "x-chain"), None);
        assert_eq!(value(&patch.set_headers, "x-chaos-tag"), None);
    }

    #[test]
    fn respond_body_names_tag() {
        let chaos = Chaos::from_config(r#"{"tag": "t1"}"#, 1).unwrap();
        let r = chaos.respond(418);
        assert_eq!(r.status, 418);
        assert_eq!(r.body, br#"{"plugin":"chaos","tag":"t1"}"#);
    }

    #[test]
    fn limit_breaking_outputs_are_over_limits() {
        assert_eq!(big_body().body.len(), 4 * MIB);
        assert_eq!(many_headers().len(), 10_000);
        assert_eq!(bad_header().name, "bad name");
    }
}
