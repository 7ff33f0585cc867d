//! What the gateway tells operators about each request: the access log, and
//! the trace context it reads from clients, the traces it exports.

pub mod access_log;
pub mod hooks;
mod otlp;
pub mod recent;
pub mod trace;

/// The trace id of a W3C `traceparent` (`00-<32 hex>-<16 hex>-<2 hex>`), when
/// the client sent one that is well-formed: so a log line can be joined with
/// the caller's trace. Lower-case hex only, and never all zeros, as the
/// specification requires.
pub fn trace_id(headers: &http::HeaderMap) -> Option<[u8; 32]> {
    let mut values = headers.get_all("traceparent").iter();
    let v = values.next()?.as_bytes();
    if values.next().is_some() || v.len() < 55 {
        return None;
    }
    let hex = |b: &[u8]| b.iter().all(|c| matches!(c, b'0'..=b'9' | b'a'..=b'f'));
    let (version, trace, parent, flags) = (&v[0..2], &v[3..35], &v[36..52], &v[53..55]);
    let dashes = v[2] == b'-' && v[35] == b'-' && v[52] == b'-';
    // Version 00 is exactly 55 bytes; a later version may append fields.
    let length_ok = v.len() == 55 || (version != b"00" && v[55] == b'-');
    if !dashes
        || !length_ok
        || version == b"ff"
        || !hex(version)
        || !hex(trace)
        || !hex(parent)
        || !hex(flags)
        || trace.iter().all(|&c| c == b'0')
        || parent.iter().all(|&c| c == b'0')
    {
        return None;
    }
    let mut out = [0u8; 32];
    out.copy_from_slice(trace);
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(v: &str) -> Option<String> {
        let mut h = http::HeaderMap::new();
        h.insert("traceparent", v.parse().unwrap());
        trace_id(&h).map(|t| String::from_utf8(t.to_vec()).unwrap())
    }

    #[test]
    fn reads_a_well_formed_traceparent_only() {
        let good = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        assert_eq!(
            parse(good).as_deref(),
            Some("4bf92f3577b34da6a3ce929d0e0e4736")
        );
        assert!(parse("01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra").is_some());
        for bad in [
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-x",
            "00-4bf92f3577b34da6a3ce929d0e0e4736_00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
        ] {
            assert_eq!(parse(bad), None, "{bad}");
        }
    }
}
