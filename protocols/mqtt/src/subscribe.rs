//! SUBSCRIBE, SUBACK, UNSUBSCRIBE, UNSUBACK (§3.8–3.11).
//!
//! ```text
//! SUBSCRIBE   | 0x82 | remaining length | packet id | [v5 properties] |
//!             | (topic filter, options)+ |
//! options:    reserved(7-6) retain handling(5-4) retain as published(3) no local(2) QoS(1-0)
//! SUBACK      | 0x90 | remaining length | packet id | [v5 properties] | reason code+ |
//! UNSUBSCRIBE | 0xA2 | remaining length | packet id | [v5 properties] | topic filter+ |
//! UNSUBACK    | 0xB0 | remaining length | packet id | [v5 properties | reason code+] |
//! ```

use bytes::{BufMut, BytesMut};

use crate::properties::{Context, Properties};
use crate::wire::{Reader, put_string};
use crate::{Limits, MqttError, QoS, ReasonCode, reason, validate_topic_filter};

/// A request to subscribe to one or more topic filters.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Subscribe {
    /// Packet identifier (non-zero).
    pub packet_id: u16,
    /// MQTT 5 properties (Subscription Identifier, User Property).
    pub properties: Properties,
    /// At least one subscription.
    pub subscriptions: Vec<Subscription>,
}

/// One topic filter of a SUBSCRIBE and its options.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Subscription {
    /// The topic filter (wildcards allowed; `$share/...` in MQTT 5).
    pub filter: String,
    /// Maximum QoS granted to messages on this filter.
    pub qos: QoS,
    /// MQTT 5: do not send the subscriber its own publications.
    pub no_local: bool,
    /// MQTT 5: keep the retain flag on forwarded messages.
    pub retain_as_published: bool,
    /// MQTT 5: when to send retained messages (0, 1 or 2).
    pub retain_handling: u8,
}

/// The answer to SUBSCRIBE: one reason code per subscription, in order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SubAck {
    /// The SUBSCRIBE acknowledged.
    pub packet_id: u16,
    /// MQTT 5 properties.
    pub properties: Properties,
    /// Granted QoS or failure, per subscription.
    pub reason_codes: Vec<ReasonCode>,
}

/// A request to unsubscribe from one or more topic filters.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Unsubscribe {
    /// Packet identifier (non-zero).
    pub packet_id: u16,
    /// MQTT 5 properties (User Property).
    pub properties: Properties,
    /// At least one topic filter.
    pub filters: Vec<String>,
}

/// The answer to UNSUBSCRIBE.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UnsubAck {
    /// The UNSUBSCRIBE acknowledged.
    pub packet_id: u16,
    /// MQTT 5 properties.
    pub properties: Properties,
    /// MQTT 5: one reason code per filter (empty in 3.1.1, which has none).
    pub reason_codes: Vec<ReasonCode>,
}

fn read_filter(r: &mut Reader<'_>, v5: bool, limits: &Limits) -> Result<String, MqttError> {
    let f = r.string("topic filter")?;
    validate_topic_filter(&f, limits.max_topic_len, v5).map_err(MqttError::InvalidTopicFilter)?;
    Ok(f)
}

fn read_properties(r: &mut Reader<'_>, v5: bool, limits: &Limits) -> Result<Properties, MqttError> {
    if v5 {
        Properties::decode(r, Context::Packet(r.packet), limits)
    } else {
        Ok(Properties::default())
    }
}

fn read_codes(r: &mut Reader<'_>, v5: bool) -> Result<Vec<ReasonCode>, MqttError> {
    let mut codes = Vec::with_capacity(r.remaining());
    while !r.is_empty() {
        codes.push(reason::check(r.packet, v5, r.u8()?)?);
    }
    Ok(codes)
}

fn put_properties(p: &Properties, v5: bool, dst: &mut BytesMut) -> Result<(), MqttError> {
    if v5 { p.encode(dst) } else { Ok(()) }
}

// === impl Subscribe ===

impl Subscribe {
    pub(crate) fn decode(r: &mut Reader<'_>, v5: bool, limits: &Limits) -> Result<Self, MqttError> {
        let packet_id = r.packet_id()?;
        let properties = read_properties(r, v5, limits)?;
        let mut subscriptions = Vec::new();
        while !r.is_empty() {
            let filter = read_filter(r, v5, limits)?;
            let options = r.u8()?;
            let reserved = if v5 { 0xC0 } else { 0xFC };
            let retain_handling = (options >> 4) & 0x03;
            if options & reserved != 0 || retain_handling == 3 {
                return Err(MqttError::InvalidSubscriptionOptions { options });
            }
            subscriptions.push(Subscription {
                filter,
                qos: QoS::from_bits(options & 0x03)?,
                no_local: options & 0x04 != 0,
                retain_as_published: options & 0x08 != 0,
                retain_handling,
            });
        }
        if subscriptions.is_empty() {
            return Err(MqttError::NoTopicFilters { packet: r.packet });
        }
        Ok(Subscribe {
            packet_id,
            properties,
            subscriptions,
        })
    }

    pub(crate) fn encode_body(&self, v5: bool, dst: &mut BytesMut) -> Result<(), MqttError> {
        dst.put_u16(self.packet_id);
        put_properties(&self.properties, v5, dst)?;
        for s in &self.subscriptions {
            put_string(dst, "topic filter", &s.filter)?;
            let mut options = s.qos as u8;
            if v5 {
                options |= u8::from(s.no_local) << 2
                    | u8::from(s.retain_as_published) << 3
                    | (s.retain_handling & 0x03) << 4;
            }
            dst.put_u8(options);
        }
        Ok(())
    }
}

impl Subscription {
    /// A subscription with default MQTT 5 options.
    pub fn new(filter: impl Into<String>, qos: QoS) -> Self {
        Subscription {
            filter: filter.into(),
            qos,
            no_local: false,
            retain_as_published: false,
            retain_handling: 0,
        }
    }
}

// === impl SubAck ===

impl SubAck {
    pub(crate) fn decode(r: &mut Reader<'_>, v5: bool, limits: &Limits) -> Result<Self, MqttError> {
        let packet_id = r.packet_id()?;
        let properties = read_properties(r, v5, limits)?;
        let reason_codes = read_codes(r, v5)?;
        if reason_codes.is_empty() {
            return Err(MqttError::Truncated { packet: r.packet });
        }
        Ok(SubAck {
            packet_id,
            properties,
            reason_codes,
        })
    }

    pub(crate) fn encode_body(&self, v5: bool, dst: &mut BytesMut) -> Result<(), MqttError> {
        dst.put_u16(self.packet_id);
        put_properties(&self.properties, v5, dst)?;
        dst.extend(self.reason_codes.iter().map(|c| c.0));
        Ok(())
    }
}

// === impl Unsubscribe ===

impl Unsubscribe {
    pub(crate) fn decode(r: &mut Reader<'_>, v5: bool, limits: &Limits) -> Result<Self, MqttError> {
        let packet_id = r.packet_id()?;
        let properties = read_properties(r, v5, limits)?;
        let mut filters = Vec::new();
        while !r.is_empty() {
            filters.push(read_filter(r, v5, limits)?);
        }
        if filters.is_empty() {
            return Err(MqttError::NoTopicFilters { packet: r.packet });
        }
        Ok(Unsubscribe {
            packet_id,
            properties,
            filters,
        })
    }

    pub(crate) fn encode_body(&self, v5: bool, dst: &mut BytesMut) -> Result<(), MqttError> {
        dst.put_u16(self.packet_id);
        put_properties(&self.properties, v5, dst)?;
        for f in &self.filters {
            put_string(dst, "topic filter", f)?;
        }
        Ok(())
    }
}

// === impl UnsubAck ===

impl UnsubAck {
    pub(crate) fn decode(r: &mut Reader<'_>, v5: bool, limits: &Limits) -> Result<Self, MqttError> {
        let packet_id = r.packet_id()?;
        let properties = read_properties(r, v5, limits)?;
        let reason_codes = if v5 { read_codes(r, v5)? } else { Vec::new() };
        if v5 && reason_codes.is_empty() {
            return Err(MqttError::Truncated { packet: r.packet });
        }
        r.finish()?;
        Ok(UnsubAck {
            packet_id,
            properties,
            reason_codes,
        })
    }

    pub(crate) fn encode_body(&self, v5: bool, dst: &mut BytesMut) -> Result<(), MqttError> {
        dst.put_u16(self.packet_id);
        if v5 {
            self.properties.encode(dst)?;
            dst.extend(self.reason_codes.iter().map(|c| c.0));
        }
        Ok(())
    }
}
