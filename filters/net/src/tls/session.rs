//! A rustls connection driven over in-memory buffers: ciphertext in, plaintext out, and back.

use std::io::{self, Read, Write};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use flowgate_pipeline::{ErrorKind, Side, StreamError, TlsInfo};
use rustls::{Connection, ProtocolVersion};

use super::identity::peer_identity;

/// Why a TLS filter ended a stream: the cause inside its [`ErrorKind::Tls`] stream error.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsError {
    /// The handshake did not finish in time.
    #[error("the TLS handshake did not finish within {0:?}")]
    HandshakeTimeout(Duration),
    /// The peer closed the connection before the handshake finished.
    #[error("the peer closed the connection during the TLS handshake")]
    ClosedInHandshake,
    /// The session could not be created from its configuration.
    #[error("cannot start a TLS session: {0}")]
    Setup(rustls::Error),
    /// rustls rejected what the peer sent (a bad record, a failed certificate check…).
    #[error(transparent)]
    Protocol(#[from] rustls::Error),
    /// rustls could not take more bytes.
    #[error("TLS buffer: {0}")]
    Buffer(#[from] io::Error),
}

/// What one batch of ciphertext produced.
pub(super) struct Received {
    /// Decrypted application data (may be empty).
    pub plain: Bytes,
    /// The peer has sent `close_notify`: no more plaintext will come.
    pub closed: bool,
}

/// One TLS session and the side its peer is on (the side blamed for failures).
pub(super) struct Session {
    conn: Connection,
    peer: Side,
}

impl Session {
    pub fn new(conn: impl Into<Connection>, peer: Side) -> Self {
        Session {
            conn: conn.into(),
            peer,
        }
    }

    pub fn is_handshaking(&self) -> bool {
        self.conn.is_handshaking()
    }

    /// A stream error blaming the peer.
    pub fn error(&self, e: TlsError) -> StreamError {
        StreamError::new(ErrorKind::Tls, self.peer).with_cause(e)
    }

    /// Feeds ciphertext from the peer. After an error, [`Session::take_outgoing`] holds the
    /// alert to send.
    pub fn receive(&mut self, mut data: &[u8]) -> Result<Received, TlsError> {
        let mut plain = BytesMut::new();
        let mut closed = false;
        while !data.is_empty() {
            // `read_tls` reads at most one buffer's worth; process after each read so the
            // buffers of rustls never fill up.
            let n = self.conn.read_tls(&mut data)?;
            closed = self.process(&mut plain)?;
            if n == 0 || closed {
                // After close_notify the rest is ignored.
                break;
            }
        }
        Ok(Received {
            plain: plain.freeze(),
            closed,
        })
    }

    /// Tells the session that the peer's byte stream ended.
    pub fn receive_eof(&mut self) -> Result<Received, TlsError> {
        let mut empty: &[u8] = &[];
        self.conn.read_tls(&mut empty)?;
        let mut plain = BytesMut::new();
        let closed = self.process(&mut plain)?;
        Ok(Received {
            plain: plain.freeze(),
            closed,
        })
    }

    fn process(&mut self, plain: &mut BytesMut) -> Result<bool, TlsError> {
        let state = self.conn.process_new_packets()?;
        let n = state.plaintext_bytes_to_read();
        if n > 0 {
            let start = plain.len();
            plain.resize(start + n, 0);
            if let Some(buf) = plain.get_mut(start..) {
                self.conn.reader().read_exact(buf)?;
            }
        }
        Ok(state.peer_has_closed())
    }

    /// Encrypts application data; returns the ciphertext to send.
    pub fn send(&mut self, mut plain: &[u8]) -> Result<Bytes, TlsError> {
        let mut out = Vec::new();
        while !plain.is_empty() {
            let n = self.conn.writer().write(plain)?;
            self.drain_into(&mut out);
            if n == 0 {
                return Err(io::Error::from(io::ErrorKind::WriteZero).into());
            }
            plain = plain.get(n..).unwrap_or_default();
        }
        Ok(out.into())
    }

    /// Queues `close_notify`; returns the ciphertext to send.
    pub fn close(&mut self) -> Option<Bytes> {
        self.conn.send_close_notify();
        self.take_outgoing()
    }

    /// Ciphertext waiting to be sent (handshake messages, alerts), if any.
    pub fn take_outgoing(&mut self) -> Option<Bytes> {
        let mut out = Vec::new();
        self.drain_into(&mut out);
        (!out.is_empty()).then(|| out.into())
    }

    fn drain_into(&mut self, out: &mut Vec<u8>) {
        while self.conn.wants_write() {
            // Writing into a Vec cannot fail.
            match self.conn.write_tls(out) {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
        }
    }

    /// The facts of the finished handshake.
    pub fn info(&self) -> TlsInfo {
        let sni = match &self.conn {
            Connection::Server(s) => s.server_name().map(str::to_string),
            Connection::Client(_) => None,
        };
        let version = self.conn.protocol_version().map(|v| match v {
            ProtocolVersion::TLSv1_3 => "TLSv1.3".to_string(),
            ProtocolVersion::TLSv1_2 => "TLSv1.2".to_string(),
            other => format!("{other:?}"),
        });
        TlsInfo {
            sni,
            alpn: self.conn.alpn_protocol().map(<[u8]>::to_vec),
            peer_identity: self
                .conn
                .peer_certificates()
                .and_then(|c| c.first())
                .and_then(|c| peer_identity(c)),
            version,
        }
    }
}
