//! A passive watch over the HTTP/2 frames a client sends, for the abuse the
//! h2 crate does not bound itself: runs of frames with empty payloads (empty
//! DATA or HEADERS without END_STREAM, which cost the server work and carry
//! nothing) and floods of control frames that each demand a reply or
//! processing (PING, SETTINGS, PRIORITY). It reads only frame headers as the
//! bytes go by; the payloads are skipped, never copied.
//!
//! Limits follow Envoy's edge defaults where Envoy has one: more than one
//! empty-payload frame in a row
//! (`max_consecutive_inbound_frames_with_empty_payload: 1`). Control frames
//! are bounded by rate.

use std::time::Duration;

use tokio::time::Instant;

/// Most consecutive frames with an empty payload and no END_STREAM.
pub const MAX_EMPTY_FRAMES_IN_A_ROW: u32 = 1;
/// Most PING, SETTINGS and PRIORITY frames (ACKs not counted) in one window.
pub const MAX_CONTROL_FRAMES_PER_WINDOW: u32 = 100;
/// The control-frame window.
pub const CONTROL_WINDOW: Duration = Duration::from_secs(1);

const DATA: u8 = 0x0;
const HEADERS: u8 = 0x1;
const PRIORITY: u8 = 0x2;
const SETTINGS: u8 = 0x4;
const PING: u8 = 0x6;
const CONTINUATION: u8 = 0x9;
const END_STREAM: u8 = 0x1;
const ACK: u8 = 0x1;

/// Why a connection is judged abusive.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Abuse {
    /// Frames that carry nothing, one after another.
    #[error("more than {MAX_EMPTY_FRAMES_IN_A_ROW} frame(s) in a row with an empty payload")]
    EmptyFrames,
    /// PING, SETTINGS or PRIORITY frames faster than the limit.
    #[error("more than {MAX_CONTROL_FRAMES_PER_WINDOW} control frames within {CONTROL_WINDOW:?}")]
    ControlFlood,
}

/// Frame-header state across reads.
#[derive(Debug)]
pub struct FrameWatch {
    /// Bytes still to skip: the rest of the preface, or of a frame's payload.
    skip: usize,
    header: [u8; 9],
    have: usize,
    empty_run: u32,
    window_start: Option<Instant>,
    control: u32,
}

impl FrameWatch {
    /// A watch starting at the first byte of the connection (the preface).
    pub fn new(preface_len: usize) -> FrameWatch {
        FrameWatch {
            skip: preface_len,
            header: [0; 9],
            have: 0,
            empty_run: 0,
            window_start: None,
            control: 0,
        }
    }

    /// Account for the next bytes the client sent.
    pub fn feed(&mut self, mut data: &[u8]) -> Result<(), Abuse> {
        while !data.is_empty() {
            if self.skip > 0 {
                let n = self.skip.min(data.len());
                self.skip -= n;
                data = &data[n..];
                continue;
            }
            let n = (9 - self.have).min(data.len());
            self.header[self.have..self.have + n].copy_from_slice(&data[..n]);
            self.have += n;
            data = &data[n..];
            if self.have == 9 {
                self.have = 0;
                let h = self.header;
                let len = (h[0] as usize) << 16 | (h[1] as usize) << 8 | h[2] as usize;
                self.frame(h[3], h[4], len)?;
                self.skip = len;
            }
        }
        Ok(())
    }

    fn frame(&mut self, kind: u8, flags: u8, len: usize) -> Result<(), Abuse> {
        match kind {
            DATA | HEADERS | CONTINUATION => {
                if len == 0 && flags & END_STREAM == 0 {
                    self.empty_run += 1;
                    if self.empty_run > MAX_EMPTY_FRAMES_IN_A_ROW {
                        return Err(Abuse::EmptyFrames);
                    }
                } else {
                    self.empty_run = 0;
                }
            }
            PING | SETTINGS if flags & ACK != 0 => {}
            PING | SETTINGS | PRIORITY => {
                let now = Instant::now();
                match self.window_start {
                    Some(start) if now.duration_since(start) < CONTROL_WINDOW => {}
                    _ => {
                        self.window_start = Some(now);
                        self.control = 0;
                    }
                }
                self.control += 1;
                if self.control > MAX_CONTROL_FRAMES_PER_WINDOW {
                    return Err(Abuse::ControlFlood);
                }
            }
            _ => {}
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(kind: u8, flags: u8, payload: &[u8]) -> Vec<u8> {
        let len = payload.len();
        let mut f = vec![
            (len >> 16) as u8,
            (len >> 8) as u8,
            len as u8,
            kind,
            flags,
            0,
            0,
            0,
            1,
        ];
        f.extend_from_slice(payload);
        f
    }

    const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

    #[test]
    fn ordinary_traffic_passes_in_any_split() {
        let mut bytes = PREFACE.to_vec();
        bytes.extend(frame(SETTINGS, 0, &[0; 12]));
        bytes.extend(frame(HEADERS, 0x4, &[0x82; 40]));
        for _ in 0..50 {
            bytes.extend(frame(DATA, 0, &[7; 300]));
        }
        bytes.extend(frame(DATA, END_STREAM, &[]));
        bytes.extend(frame(SETTINGS, ACK, &[]));
        bytes.extend(frame(PING, 0, &[0; 8]));
        for split in [1, 2, 7, 9, 10, 64, 4096] {
            let mut w = FrameWatch::new(PREFACE.len());
            for chunk in bytes.chunks(split) {
                assert_eq!(w.feed(chunk), Ok(()), "split {split}");
            }
        }
    }

    #[tokio::test(start_paused = true)]
    async fn empty_frames_in_a_row_are_abuse() {
        let mut w = FrameWatch::new(0);
        assert_eq!(w.feed(&frame(DATA, 0, &[])), Ok(()));
        assert_eq!(w.feed(&frame(DATA, 0, &[])), Err(Abuse::EmptyFrames));
        let mut w = FrameWatch::new(0);
        for _ in 0..100 {
            assert_eq!(w.feed(&frame(DATA, 0, &[])), Ok(()));
            assert_eq!(w.feed(&frame(DATA, 0, &[1])), Ok(()));
        }
    }

    #[tokio::test(start_paused = true)]
    async fn control_frames_are_bounded_by_rate() {
        let mut w = FrameWatch::new(0);
        for _ in 0..MAX_CONTROL_FRAMES_PER_WINDOW {
            assert_eq!(w.feed(&frame(PING, 0, &[0; 8])), Ok(()));
        }
        // ACKs are answers, not demands.
        assert_eq!(w.feed(&frame(SETTINGS, ACK, &[])), Ok(()));
        assert_eq!(w.feed(&frame(PING, 0, &[0; 8])), Err(Abuse::ControlFlood));

        let mut w = FrameWatch::new(0);
        for _ in 0..5 {
            for _ in 0..MAX_CONTROL_FRAMES_PER_WINDOW {
                assert_eq!(w.feed(&frame(SETTINGS, 0, &[])), Ok(()));
            }
            tokio::time::advance(CONTROL_WINDOW).await;
        }
    }
}
