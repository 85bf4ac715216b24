//! Watching an HTTP/2 client's header blocks from outside `h2`.
//!
//! `h2` assembles a header block (HEADERS or PUSH_PROMISE, then CONTINUATION frames up to
//! one with END_HEADERS) before it shows the request, and while a block is open the
//! connection can carry nothing else (RFC 9113 §6.10). A client that starts a block and
//! never ends it would hold its connection and a stream slot for as long as it likes, so the
//! server reads the frame headers going past and bounds how long a block may stay open, as
//! HTTP/1 bounds the time to receive a request head.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context as TaskCx, Poll};

use flowgate_pipeline::{Event, Events};
use futures_core::Stream;

const FRAME_HEADER: usize = 9;
const HEADERS: u8 = 0x1;
const PUSH_PROMISE: u8 = 0x5;
const CONTINUATION: u8 = 0x9;
const END_HEADERS: u8 = 0x4;

/// Whether a header block is open, as the frames read so far say: `blocks * 2 + open`, so
/// the reader sees a new block even when one ended and another started between two looks.
#[derive(Default)]
pub(crate) struct BlockState(AtomicU64);

impl BlockState {
    /// `Some(n)` while the n-th header block is open, `None` between blocks.
    pub(crate) fn open_block(&self) -> Option<u64> {
        let v = self.0.load(Ordering::Relaxed);
        (v & 1 == 1).then_some(v >> 1)
    }

    fn set(&self, open: bool) {
        let v = self.0.load(Ordering::Relaxed);
        let next = match (v & 1 == 1, open) {
            (false, true) => v + 1,
            (true, false) => v + 1,
            _ => v,
        };
        self.0.store(next, Ordering::Relaxed);
    }
}

/// The client's bytes, passed on unchanged, with their frame headers read on the way.
pub(crate) struct WatchHeaderBlocks {
    input: Events,
    state: Arc<BlockState>,
    /// Preface bytes still to skip.
    preface: usize,
    /// The frame header being read.
    header: [u8; FRAME_HEADER],
    have: usize,
    /// Payload bytes of the current frame still to skip.
    payload: u64,
}

impl WatchHeaderBlocks {
    /// Watches `input`, which starts with the 24-byte client preface.
    pub(crate) fn new(input: Events, state: Arc<BlockState>) -> Self {
        WatchHeaderBlocks {
            input,
            state,
            preface: super::http2::PREFACE.len(),
            header: [0; FRAME_HEADER],
            have: 0,
            payload: 0,
        }
    }

    fn scan(&mut self, mut b: &[u8]) {
        while !b.is_empty() {
            if self.preface > 0 {
                let n = self.preface.min(b.len());
                self.preface -= n;
                b = &b[n..];
            } else if self.payload > 0 {
                let n = usize::try_from(self.payload).map_or(b.len(), |p| p.min(b.len()));
                self.payload -= n as u64;
                b = &b[n..];
            } else {
                let n = (FRAME_HEADER - self.have).min(b.len());
                self.header[self.have..self.have + n].copy_from_slice(&b[..n]);
                self.have += n;
                b = &b[n..];
                if self.have == FRAME_HEADER {
                    self.have = 0;
                    self.frame();
                }
            }
        }
    }

    fn frame(&mut self) {
        let h = &self.header;
        self.payload = u64::from(h[0]) << 16 | u64::from(h[1]) << 8 | u64::from(h[2]);
        let (kind, flags) = (h[3], h[4]);
        let ends = flags & END_HEADERS != 0;
        match kind {
            HEADERS | PUSH_PROMISE => self.state.set(!ends),
            CONTINUATION if ends => self.state.set(false),
            _ => {}
        }
    }
}

impl Stream for WatchHeaderBlocks {
    type Item = Event;

    fn poll_next(mut self: Pin<&mut Self>, task: &mut TaskCx<'_>) -> Poll<Option<Event>> {
        let ev = self.input.as_mut().poll_next(task);
        if let Poll::Ready(Some(Event::Data(b))) = &ev {
            self.scan(b);
        }
        ev
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use bytes::Bytes;

    fn frame(kind: u8, flags: u8, payload: &[u8]) -> Vec<u8> {
        let len = payload.len();
        let mut v = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags];
        v.extend_from_slice(&1u32.to_be_bytes());
        v.extend_from_slice(payload);
        v
    }

    /// Feeds `bytes` in pieces of `step` and returns the open block after each frame list.
    fn watch(bytes: &[u8], step: usize) -> Option<u64> {
        let state = Arc::new(BlockState::default());
        let mut w = WatchHeaderBlocks::new(Box::pin(futures_util::stream::empty()), state.clone());
        for piece in bytes.chunks(step) {
            w.scan(&Bytes::copy_from_slice(piece));
        }
        state.open_block()
    }

    #[test]
    fn header_blocks_are_followed_across_frames_and_pieces() {
        let mut bytes = super::super::http2::PREFACE.to_vec();
        bytes.extend(frame(0x4, 0, &[])); // SETTINGS
        bytes.extend(frame(HEADERS, END_HEADERS | 0x1, &[0x82; 10])); // whole block
        bytes.extend(frame(0x0, 0x1, &[0x17; 300])); // DATA that looks like a HEADERS type
        for step in [1, 3, 7, 1000] {
            assert_eq!(watch(&bytes, step), None, "step {step}");
        }
        let mut open = bytes.clone();
        open.extend(frame(HEADERS, 0x1, &[0x82; 5])); // no END_HEADERS
        for step in [1, 3, 1000] {
            assert_eq!(watch(&open, step), Some(0), "step {step}");
        }
        open.extend(frame(CONTINUATION, 0, &[0x84; 5]));
        assert_eq!(watch(&open, 2), Some(0));
        open.extend(frame(CONTINUATION, END_HEADERS, &[0x86]));
        assert_eq!(watch(&open, 2), None);
        open.extend(frame(PUSH_PROMISE, 0, &[0; 8]));
        assert_eq!(watch(&open, 5), Some(1));
    }
}
