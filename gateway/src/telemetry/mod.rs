//! What the gateway tells operators about each request: the access log, and
//! the trace context it reads from clients, the traces it exports.

pub mod access_log;
pub mod hooks;
mod otlp;
pub mod recent;
pub mod trace;

/// The trace id of a W3C `traceparent` (`00-<32 hex>-<16 hex>-<2 hex>`), when
/// the client sent one that is well-formed: so a log line can be joined with
/// the caller's trace.
pub fn trace_id(headers: &http::HeaderMap) -> Option<[u8; 32]> {
    let v = single_traceparent(headers)?;
    let mut out = [0u8; 32];
    out.copy_from_slice(&v[3..35]);
    Some(out)
}

/// A caller's trace context, from its `traceparent`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct TraceParent {
    pub(crate) trace_id: [u8; 16],
    /// The caller's span: the parent of the server span.
    pub(crate) span_id: [u8; 8],
    /// Whether the caller recorded its span (the `sampled` flag).
    pub(crate) sampled: bool,
}

/// The caller's trace context, when its `traceparent` is well-formed.
pub(crate) fn traceparent(headers: &http::HeaderMap) -> Option<TraceParent> {
    let v = single_traceparent(headers)?;
    let mut trace_id = [0u8; 16];
    let mut span_id = [0u8; 8];
    unhex(&v[3..35], &mut trace_id);
    unhex(&v[36..52], &mut span_id);
    let mut flags = [0u8; 1];
    unhex(&v[53..55], &mut flags);
    Some(TraceParent {
        trace_id,
        span_id,
        sampled: flags[0] & 1 == 1,
    })
}

/// The one `traceparent` value, when it is well-formed: lower-case hex
/// only, and never an all-zero id, as the specification requires.
fn single_traceparent(headers: &http::HeaderMap) -> Option<&[u8]> {
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
    Some(v)
}

/// Lower-case hex digits (already checked) into bytes.
fn unhex(digits: &[u8], out: &mut [u8]) {
    let val = |c: u8| {
        if c.is_ascii_digit() {
            c - b'0'
        } else {
            c - b'a' + 10
        }
    };
    for (i, o) in out.iter_mut().enumerate() {
        *o = val(digits[2 * i]) << 4 | val(digits[2 * i + 1]);
    }
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

    #[test]
    fn a_traceparent_gives_the_callers_ids_and_sampling_decision() {
        let mut h = http::HeaderMap::new();
        h.insert(
            "traceparent",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
                .parse()
                .unwrap(),
        );
        let p = traceparent(&h).unwrap();
        assert_eq!(p.trace_id[..4], [0x4b, 0xf9, 0x2f, 0x35]);
        assert_eq!(p.trace_id[15], 0x36);
        assert_eq!(p.span_id, [0x00, 0xf0, 0x67, 0xaa, 0x0b, 0xa9, 0x02, 0xb7]);
        assert!(p.sampled);
        h.insert(
            "traceparent",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-02"
                .parse()
                .unwrap(),
        );
        assert!(!traceparent(&h).unwrap().sampled);
        h.append(
            "traceparent",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
                .parse()
                .unwrap(),
        );
        assert_eq!(traceparent(&h), None, "two values: neither is trusted");
    }
}
