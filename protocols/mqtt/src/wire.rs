//! The data representations of MQTT §1.5: integers, variable byte integers, UTF-8 strings
//! and binary data, read from a complete packet body and written into a `BytesMut`.

use bytes::{BufMut, Bytes, BytesMut};

use crate::MqttError;
use crate::packet::PacketType;

/// The largest value a variable byte integer holds (four bytes).
pub(crate) const VARINT_MAX: u32 = 268_435_455;

/// Decodes a variable byte integer from the start of `buf`: `Ok(None)` when more bytes are
/// needed, else the value and how many bytes it took. Rejects a fifth byte and non-minimal
/// encodings (a final 0x00 after a continuation byte).
pub(crate) fn decode_varint(buf: &[u8]) -> Result<Option<(u32, usize)>, MqttError> {
    let mut value = 0u32;
    for i in 0..4 {
        let Some(&b) = buf.get(i) else {
            return Ok(None);
        };
        value |= u32::from(b & 0x7F) << (7 * i);
        if b & 0x80 == 0 {
            if i > 0 && b == 0 {
                return Err(MqttError::VarIntNotMinimal);
            }
            return Ok(Some((value, i + 1)));
        }
    }
    Err(MqttError::VarIntTooLong)
}

/// How many bytes `value` takes as a variable byte integer.
pub(crate) fn varint_len(value: usize) -> usize {
    match value {
        0..=127 => 1,
        128..=16_383 => 2,
        16_384..=2_097_151 => 3,
        _ => 4,
    }
}

/// A cursor over one complete packet body (or a piece of it).
pub(crate) struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
    pub(crate) packet: PacketType,
}

impl<'a> Reader<'a> {
    pub(crate) fn new(buf: &'a [u8], packet: PacketType) -> Self {
        Reader {
            buf,
            pos: 0,
            packet,
        }
    }

    pub(crate) fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.remaining() == 0
    }

    /// Fails with `TrailingBytes` unless everything was read.
    pub(crate) fn finish(&self) -> Result<(), MqttError> {
        match self.remaining() {
            0 => Ok(()),
            extra => Err(MqttError::TrailingBytes {
                packet: self.packet,
                extra,
            }),
        }
    }

    pub(crate) fn take(&mut self, n: usize) -> Result<&'a [u8], MqttError> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.buf.len());
        let end = end.ok_or(MqttError::Truncated {
            packet: self.packet,
        })?;
        let s = &self.buf[self.pos..end];
        self.pos = end;
        Ok(s)
    }

    pub(crate) fn u8(&mut self) -> Result<u8, MqttError> {
        Ok(self.take(1)?[0])
    }

    pub(crate) fn u16(&mut self) -> Result<u16, MqttError> {
        let b = self.take(2)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }

    pub(crate) fn u32(&mut self) -> Result<u32, MqttError> {
        let b = self.take(4)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    pub(crate) fn varint(&mut self) -> Result<u32, MqttError> {
        match decode_varint(&self.buf[self.pos..])? {
            Some((v, n)) => {
                self.pos += n;
                Ok(v)
            }
            None => Err(MqttError::Truncated {
                packet: self.packet,
            }),
        }
    }

    /// A packet identifier, which must not be 0.
    pub(crate) fn packet_id(&mut self) -> Result<u16, MqttError> {
        match self.u16()? {
            0 => Err(MqttError::PacketIdZero {
                packet: self.packet,
            }),
            id => Ok(id),
        }
    }

    /// A length-prefixed UTF-8 string: well-formed, without U+0000.
    pub(crate) fn string(&mut self, field: &'static str) -> Result<String, MqttError> {
        let len = usize::from(self.u16()?);
        let raw = self.take(len)?;
        let s = std::str::from_utf8(raw).map_err(|_| MqttError::InvalidUtf8 { field })?;
        if s.contains('\0') {
            return Err(MqttError::NullCharacter { field });
        }
        Ok(s.to_owned())
    }

    /// Length-prefixed binary data.
    pub(crate) fn binary(&mut self) -> Result<Bytes, MqttError> {
        let len = usize::from(self.u16()?);
        Ok(Bytes::copy_from_slice(self.take(len)?))
    }
}

/// Writes a length-prefixed string.
pub(crate) fn put_string(
    dst: &mut BytesMut,
    field: &'static str,
    s: &str,
) -> Result<(), MqttError> {
    put_binary(dst, field, s.as_bytes())
}

/// Writes length-prefixed binary data.
pub(crate) fn put_binary(
    dst: &mut BytesMut,
    field: &'static str,
    b: &[u8],
) -> Result<(), MqttError> {
    let len = u16::try_from(b.len()).map_err(|_| MqttError::FieldTooLong {
        field,
        len: b.len(),
    })?;
    dst.put_u16(len);
    dst.put_slice(b);
    Ok(())
}

/// Writes a variable byte integer (`value` at most [`VARINT_MAX`]).
pub(crate) fn put_varint(dst: &mut BytesMut, mut value: usize) {
    loop {
        let mut b = (value % 128) as u8;
        value /= 128;
        if value > 0 {
            b |= 0x80;
        }
        dst.put_u8(b);
        if value == 0 {
            return;
        }
    }
}

/// Runs `body`, which appends to `dst`, and puts the length of what it wrote in front of it
/// as a variable byte integer (the remaining length, or a property length).
pub(crate) fn put_prefixed(
    dst: &mut BytesMut,
    body: impl FnOnce(&mut BytesMut) -> Result<(), MqttError>,
) -> Result<(), MqttError> {
    put_prefixed_plus(dst, 0, body)
}

/// Like [`put_prefixed`], for a length `extra` bytes longer than what `body` writes (a
/// PUBLISH head followed by a payload appended later).
pub(crate) fn put_prefixed_plus(
    dst: &mut BytesMut,
    extra: usize,
    body: impl FnOnce(&mut BytesMut) -> Result<(), MqttError>,
) -> Result<(), MqttError> {
    let start = dst.len();
    dst.put_bytes(0, 4);
    if let Err(e) = body(dst) {
        dst.truncate(start);
        return Err(e);
    }
    let written = dst.len() - start - 4;
    let len = written.saturating_add(extra);
    if len > VARINT_MAX as usize {
        dst.truncate(start);
        return Err(MqttError::PacketTooLarge {
            size: len,
            max: VARINT_MAX as usize,
        });
    }
    let n = varint_len(len);
    dst.copy_within(start + 4.., start + n);
    dst.truncate(start + n + written);
    let mut v = len;
    for i in 0..n {
        let more = if i + 1 < n { 0x80 } else { 0 };
        dst[start + i] = (v % 128) as u8 | more;
        v /= 128;
    }
    Ok(())
}
