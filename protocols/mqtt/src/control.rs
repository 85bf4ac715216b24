//! DISCONNECT (§3.14) and AUTH (§3.15, MQTT 5 only): the packets that end a session or
//! carry an authentication exchange.
//!
//! ```text
//! DISCONNECT | 0xE0 | remaining length | [v5 reason code] | [v5 properties] |
//! AUTH       | 0xF0 | remaining length | [reason code]    | [properties]    |
//! ```
//!
//! With remaining length 0 the reason code is Success; with 1 there are no properties.
//! The encoder writes the shortest form.

use bytes::{BufMut, BytesMut};

use crate::properties::{Context, Properties};
use crate::wire::Reader;
use crate::{Limits, MqttError, ReasonCode, reason};

/// The end of a session (a client's, or in MQTT 5 also a server's).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Disconnect {
    /// MQTT 5 reason code (Normal disconnection = Success).
    pub reason_code: ReasonCode,
    /// MQTT 5 properties.
    pub properties: Properties,
}

/// One step of an MQTT 5 extended authentication exchange.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Auth {
    /// Success, Continue authentication or Re-authenticate.
    pub reason_code: ReasonCode,
    /// Properties (Authentication Method and Data, Reason String, User Property).
    pub properties: Properties,
}

/// Reads the optional reason code and properties of DISCONNECT and AUTH.
fn decode_tail(r: &mut Reader<'_>, limits: &Limits) -> Result<(ReasonCode, Properties), MqttError> {
    let mut code = ReasonCode::SUCCESS;
    let mut properties = Properties::default();
    if !r.is_empty() {
        code = reason::check(r.packet, true, r.u8()?)?;
        if !r.is_empty() {
            properties = Properties::decode(r, Context::Packet(r.packet), limits)?;
        }
    }
    r.finish()?;
    Ok((code, properties))
}

fn encode_tail(
    code: ReasonCode,
    properties: &Properties,
    dst: &mut BytesMut,
) -> Result<(), MqttError> {
    if code != ReasonCode::SUCCESS || !properties.is_empty() {
        dst.put_u8(code.0);
        if !properties.is_empty() {
            properties.encode(dst)?;
        }
    }
    Ok(())
}

impl Disconnect {
    pub(crate) fn decode(r: &mut Reader<'_>, v5: bool, limits: &Limits) -> Result<Self, MqttError> {
        if !v5 {
            r.finish()?;
            return Ok(Disconnect::default());
        }
        let (reason_code, properties) = decode_tail(r, limits)?;
        Ok(Disconnect {
            reason_code,
            properties,
        })
    }

    pub(crate) fn encode_body(&self, v5: bool, dst: &mut BytesMut) -> Result<(), MqttError> {
        if v5 {
            encode_tail(self.reason_code, &self.properties, dst)?;
        }
        Ok(())
    }
}

impl Auth {
    pub(crate) fn decode(r: &mut Reader<'_>, limits: &Limits) -> Result<Self, MqttError> {
        let (reason_code, properties) = decode_tail(r, limits)?;
        Ok(Auth {
            reason_code,
            properties,
        })
    }

    pub(crate) fn encode_body(&self, dst: &mut BytesMut) -> Result<(), MqttError> {
        encode_tail(self.reason_code, &self.properties, dst)
    }
}
