//! The protobuf wire format of the eligibility hot path, by hand.
//!
//! Why not prost: a 10,000-id request decoded by prost is 10,000 `String`s,
//! and a 10,000-decision answer is 10,000 `Decision` structs with their own
//! strings and vectors, built only to be encoded and dropped. Here a
//! request's ids stay in the request's buffer ([`IdsRequest`], zero-copy),
//! and each decision is encoded straight into its part's buffer as it is
//! made ([`PartEncoder`]); the parts are joined once, by the transport.
//!
//! The field numbers are those of `eligibility.proto`; the unit tests check
//! both directions against prost's own encoding of the same messages.

use std::ops::Range;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use prost::encoding::{
    DecodeContext, WireType, decode_key, decode_varint, encode_varint, skip_field,
};
use tonic::{
    Status,
    codec::{BufferSettings, Codec, DecodeBuf, Decoder, EncodeBuf, Encoder},
};

use super::super::convert;
use crate::{
    app::Ids,
    engine::{ADDRESSES_PER_KIND_MAX, Summary},
    error::Error,
    index::Verdict,
};

/// `BatchCheckEligibilityRequest` and `StreamEligibilityRequest` (they share
/// their field numbers), with every string left in the request's buffer.
#[derive(Debug, Default)]
pub(crate) struct IdsRequest {
    buf: Bytes,
    tenant: Range<usize>,
    service_id: Range<usize>,
    /// The `channel` enum value as sent.
    pub(crate) channel: i32,
    /// The `view` enum value as sent.
    pub(crate) view: i32,
    /// Every id, one after the other (checked to be UTF-8 once, here, so
    /// that reading one back is a slice, not another check).
    ids_text: String,
    /// Where each id ends in `ids_text`.
    ids_end: Vec<u32>,
}

/// Field numbers of the request.
const TENANT: u32 = 1;
const CHANNEL: u32 = 2;
const PROFILE_IDS: u32 = 3;
const SERVICE_ID: u32 = 4;
const VIEW: u32 = 5;

fn invalid(field: impl Into<String>, what: &str) -> Status {
    Status::from(Error::invalid(field, what))
}

impl IdsRequest {
    /// Decodes one message; strings must be UTF-8 (each bad one is named).
    pub(crate) fn decode(buf: Bytes) -> Result<Self, Status> {
        let mut request = IdsRequest {
            buf: buf.clone(),
            ..IdsRequest::default()
        };
        let mut cursor = buf.clone();
        let start = cursor.remaining();
        let at = |c: &Bytes| start - c.remaining();
        let malformed = |e: prost::DecodeError| Status::from(super::super::codec::decode_error(&e));
        while cursor.has_remaining() {
            let (tag, wire) = decode_key(&mut cursor).map_err(malformed)?;
            match (tag, wire) {
                (TENANT | PROFILE_IDS | SERVICE_ID, WireType::LengthDelimited) => {
                    let len = usize::try_from(decode_varint(&mut cursor).map_err(malformed)?)
                        .unwrap_or(usize::MAX);
                    if len > cursor.remaining() {
                        return Err(invalid(
                            "request",
                            "is not a valid protobuf message: a string runs past its end",
                        ));
                    }
                    let from = at(&cursor);
                    let range = from..from + len;
                    cursor.advance(len);
                    let Ok(text) = std::str::from_utf8(&buf[range.clone()]) else {
                        let field = match tag {
                            TENANT => "tenant".to_owned(),
                            SERVICE_ID => "service_id".to_owned(),
                            _ => format!("profile_ids[{}]", request.ids_end.len()),
                        };
                        return Err(invalid(field, "is not valid UTF-8"));
                    };
                    match tag {
                        TENANT => request.tenant = range,
                        SERVICE_ID => request.service_id = range,
                        _ => {
                            if request.ids_text.is_empty() {
                                // About the rest of the message: no regrowth.
                                request.ids_text.reserve(buf.len());
                            }
                            request.ids_text.push_str(text);
                            request
                                .ids_end
                                .push(u32::try_from(request.ids_text.len()).unwrap_or(u32::MAX));
                        }
                    }
                }
                (CHANNEL | VIEW, WireType::Varint) => {
                    // An enum is an int32 on the wire; larger values wrap, as prost reads them.
                    let wide = decode_varint(&mut cursor).map_err(malformed)?;
                    let [a, b, c, d, ..] = wide.to_le_bytes();
                    let value = i32::from_le_bytes([a, b, c, d]);
                    if tag == CHANNEL {
                        request.channel = value;
                    } else {
                        request.view = value;
                    }
                }
                _ => skip_field(wire, tag, &mut cursor, DecodeContext::default())
                    .map_err(malformed)?,
            }
        }
        Ok(request)
    }

    fn text(&self, range: Range<usize>) -> &str {
        // Checked to be UTF-8 when decoded.
        std::str::from_utf8(self.buf.get(range).unwrap_or_default()).unwrap_or_default()
    }

    /// The tenant.
    pub(crate) fn tenant(&self) -> &str {
        self.text(self.tenant.clone())
    }

    /// The service id (empty when none).
    pub(crate) fn service_id(&self) -> &str {
        self.text(self.service_id.clone())
    }
}

impl Ids for IdsRequest {
    fn len(&self) -> usize {
        self.ids_end.len()
    }

    fn id(&self, i: usize) -> &str {
        let end = |i: usize| usize::try_from(self.ids_end[i]).unwrap_or(0);
        let start = if i == 0 { 0 } else { end(i - 1) };
        self.ids_text.get(start..end(i)).unwrap_or_default()
    }
}

/// How much of each decision is encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum View {
    /// Everything.
    Full,
    /// Profile id, eligible, primary reason.
    Basic,
}

/// An answer already encoded, in parts that the transport writes one after
/// the other (a message's fields may be split anywhere between them).
#[derive(Debug, Default)]
pub(crate) struct Encoded(pub(crate) Vec<Bytes>);

fn varint_len(n: usize) -> usize {
    prost::encoding::encoded_len_varint(u64::try_from(n).unwrap_or(u64::MAX))
}

fn put_len(buf: &mut BytesMut, n: usize) {
    encode_varint(u64::try_from(n).unwrap_or(u64::MAX), buf);
}

/// Field numbers of `Decision`, and of the answer's `decisions`.
const DECISIONS: u8 = 1;
const DECISION_PROFILE_ID: u8 = 1;
const DECISION_ELIGIBLE: u8 = 2;
const DECISION_REASONS: u8 = 3;
const DECISION_ADDRESSES: u8 = 4;

const fn key(field: u8, wire: WireType) -> u8 {
    (field << 3) | wire as u8
}

/// Encodes one part's decisions, each as a `decisions` field of the answer.
#[derive(Debug)]
pub(crate) struct PartEncoder {
    buf: BytesMut,
    view: View,
}

/// Bytes reserved per decision (an id, a short address, the framing).
const BYTES_PER_DECISION_GUESS: usize = 48;

impl PartEncoder {
    /// An encoder for about `decisions` decisions.
    pub(crate) fn new(view: View, decisions: usize) -> Self {
        Self {
            buf: BytesMut::with_capacity(decisions.saturating_mul(BYTES_PER_DECISION_GUESS)),
            view,
        }
    }

    /// The encoded decisions.
    pub(crate) fn finish(self) -> Bytes {
        self.buf.freeze()
    }
}

impl crate::app::DecisionSink for PartEncoder {
    fn decided(&mut self, id: &str, verdict: &Verdict<'_>) {
        let eligible = verdict.reasons.is_empty();
        let reasons = verdict.reasons.iter().take(if self.view == View::Basic {
            1
        } else {
            usize::MAX
        });
        // Every reason's number is below 128: one byte each.
        let n_reasons = reasons.clone().count();
        let full = self.view == View::Full && eligible;
        // A profile has at most 16 addresses of a kind (ADDRESSES_PER_KIND_MAX).
        let mut addresses: [&[u8]; ADDRESSES_PER_KIND_MAX] = [&[]; ADDRESSES_PER_KIND_MAX];
        let mut n_addresses = 0;
        if full {
            for (slot, address) in addresses.iter_mut().zip(verdict.address_bytes()) {
                *slot = address;
                n_addresses += 1;
            }
        }
        let addresses = &addresses[..n_addresses];
        let mut len = 1 + varint_len(id.len()) + id.len();
        if eligible {
            len += 2;
        }
        if n_reasons > 0 {
            len += 1 + varint_len(n_reasons) + n_reasons;
        }
        len += addresses
            .iter()
            .map(|a| 1 + varint_len(a.len()) + a.len())
            .sum::<usize>();
        let buf = &mut self.buf;
        buf.reserve(1 + varint_len(len) + len);
        buf.put_u8(key(DECISIONS, WireType::LengthDelimited));
        put_len(buf, len);
        buf.put_u8(key(DECISION_PROFILE_ID, WireType::LengthDelimited));
        put_len(buf, id.len());
        buf.put_slice(id.as_bytes());
        if eligible {
            buf.put_u8(key(DECISION_ELIGIBLE, WireType::Varint));
            buf.put_u8(1);
        }
        if n_reasons > 0 {
            buf.put_u8(key(DECISION_REASONS, WireType::LengthDelimited));
            put_len(buf, n_reasons);
            for reason in reasons {
                let number = i32::from(convert::exclusion_reason_to_pb(reason));
                buf.put_u8(u8::try_from(number).unwrap_or(0));
            }
        }
        for address in addresses {
            buf.put_u8(key(DECISION_ADDRESSES, WireType::LengthDelimited));
            put_len(buf, address.len());
            buf.put_slice(address);
        }
    }
}

/// A summary as field `field` of the answer.
pub(crate) fn summary_field(field: u32, summary: &Summary) -> Bytes {
    let message = convert::summary_to_pb(summary);
    let mut buf = BytesMut::with_capacity(64);
    prost::encoding::message::encode(field, &message, &mut buf);
    buf.freeze()
}

/// The codec of `BatchCheckEligibility` and `StreamEligibility`.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct IdsCodec;

/// Decodes [`IdsRequest`]s.
#[derive(Debug, Default)]
pub(crate) struct IdsDecoder;

/// Writes [`Encoded`] answers.
#[derive(Debug, Default)]
pub(crate) struct EncodedEncoder;

impl Codec for IdsCodec {
    type Encode = Encoded;
    type Decode = IdsRequest;
    type Encoder = EncodedEncoder;
    type Decoder = IdsDecoder;

    fn encoder(&mut self) -> Self::Encoder {
        EncodedEncoder
    }

    fn decoder(&mut self) -> Self::Decoder {
        IdsDecoder
    }
}

impl Encoder for EncodedEncoder {
    type Item = Encoded;
    type Error = Status;

    fn encode(&mut self, item: Encoded, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        dst.reserve(item.0.iter().map(Bytes::len).sum());
        for part in item.0 {
            dst.put_slice(&part);
        }
        Ok(())
    }

    fn buffer_settings(&self) -> BufferSettings {
        BufferSettings::default()
    }
}

impl Decoder for IdsDecoder {
    type Item = IdsRequest;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<IdsRequest>, Status> {
        let bytes = src.copy_to_bytes(src.remaining());
        IdsRequest::decode(bytes).map(Some)
    }
}

/// Encodes a prost message whole (for tests and the small answers).
#[cfg(test)]
pub(crate) fn encode_message(message: &impl prost::Message) -> Bytes {
    Bytes::from(message.encode_to_vec())
}

#[cfg(test)]
mod tests {
    use prost::Message;

    use super::*;
    use crate::{
        app::DecisionSink,
        engine::{Channel, ProfileAddresses, ProfileId, Regime, Tenant},
        index::{Delivery, Index},
        pb,
        store::{Change, Committed, Position},
    };

    #[test]
    fn a_request_decodes_as_prost_encodes_it_and_bad_utf8_is_named() {
        let request = pb::BatchCheckEligibilityRequest {
            tenant: "acme".into(),
            channel: pb::Channel::Sms.into(),
            profile_ids: vec!["p1".into(), "ü-2".into(), String::new()],
            service_id: "news".into(),
            view: pb::DecisionView::Basic.into(),
        };
        let decoded = IdsRequest::decode(encode_message(&request)).expect("decodes");
        assert_eq!(decoded.tenant(), "acme");
        assert_eq!(decoded.service_id(), "news");
        assert_eq!(decoded.channel, i32::from(pb::Channel::Sms));
        assert_eq!(decoded.view, i32::from(pb::DecisionView::Basic));
        let ids: Vec<&str> = (0..decoded.len()).map(|i| decoded.id(i)).collect();
        assert_eq!(ids, ["p1", "ü-2", ""]);

        // profile_ids[1] with a byte that is not UTF-8.
        let mut bytes = encode_message(&request).to_vec();
        let at = bytes
            .windows(2)
            .position(|w| w == "ü".as_bytes())
            .expect("found");
        bytes[at] = 0xff;
        let status = IdsRequest::decode(Bytes::from(bytes)).expect_err("refused");
        assert_eq!(status.code(), tonic::Code::InvalidArgument);
        assert!(status.message().contains("profile_ids[1]"), "{status:?}");
        assert!(IdsRequest::decode(Bytes::from_static(&[0x1a, 0x05, b'a'])).is_err());
    }

    #[test]
    fn decisions_encode_as_prost_would_and_basic_keeps_the_primary_reason_only() {
        let index = Index::new();
        let tenant = Tenant::parse("t").expect("valid");
        let mut profile = crate::engine::Profile::new(
            ProfileId::parse("p1").expect("valid"),
            ProfileAddresses {
                emails: vec![
                    crate::engine::Address::email("a@x.io").expect("valid"),
                    crate::engine::Address::email("b@x.io").expect("valid"),
                ],
                ..ProfileAddresses::default()
            },
            0,
        );
        let mut out = profile.clone();
        out.id = ProfileId::parse("p2").expect("valid");
        let ctx =
            crate::engine::ChangeContext::new(crate::engine::Source::Api, "", "").expect("valid");
        out.set_consent(
            crate::engine::Scope::AllChannels,
            crate::engine::ConsentStatus::OptedOut,
            &ctx,
            1,
        );
        out.set_consent(
            crate::engine::Scope::Channel(Channel::Email),
            crate::engine::ConsentStatus::OptedOut,
            &ctx,
            1,
        );
        profile.postal_address = String::new();
        index.loaded(Position(0));
        index.apply(&[Committed {
            position: Position(1),
            changes: vec![
                Change::Profile {
                    tenant: tenant.clone(),
                    profile: Box::new(profile),
                },
                Change::Profile {
                    tenant: tenant.clone(),
                    profile: Box::new(out),
                },
            ],
        }]);
        let delivery = Delivery {
            channel: Channel::Email,
            regime: Regime::OptOut,
            service: None,
        };
        let tenant_index = index.tenant_index(&tenant).expect("tenant");
        let lookup = tenant_index.lookup(&delivery);
        for (view, expected) in [
            (
                View::Full,
                vec![
                    pb::Decision {
                        profile_id: "p1".into(),
                        eligible: true,
                        reasons: vec![],
                        addresses: vec!["a@x.io".into(), "b@x.io".into()],
                    },
                    pb::Decision {
                        profile_id: "p2".into(),
                        eligible: false,
                        reasons: vec![
                            pb::ExclusionReason::OptedOutAllChannels.into(),
                            pb::ExclusionReason::OptedOutChannel.into(),
                        ],
                        addresses: vec![],
                    },
                    pb::Decision {
                        profile_id: "nobody".into(),
                        eligible: false,
                        reasons: vec![pb::ExclusionReason::ProfileNotFound.into()],
                        addresses: vec![],
                    },
                ],
            ),
            (
                View::Basic,
                vec![
                    pb::Decision {
                        profile_id: "p1".into(),
                        eligible: true,
                        reasons: vec![],
                        addresses: vec![],
                    },
                    pb::Decision {
                        profile_id: "p2".into(),
                        eligible: false,
                        reasons: vec![pb::ExclusionReason::OptedOutAllChannels.into()],
                        addresses: vec![],
                    },
                    pb::Decision {
                        profile_id: "nobody".into(),
                        eligible: false,
                        reasons: vec![pb::ExclusionReason::ProfileNotFound.into()],
                        addresses: vec![],
                    },
                ],
            ),
        ] {
            let mut part = PartEncoder::new(view, 3);
            let mut summary = Summary::default();
            for id in ["p1", "p2", "nobody"] {
                let verdict = lookup.decide(id);
                summary.count(verdict.reasons.primary());
                part.decided(id, &verdict);
            }
            let mut bytes = part.finish().to_vec();
            bytes.extend_from_slice(&summary_field(2, &summary));
            let decoded =
                pb::BatchCheckEligibilityResponse::decode(bytes.as_slice()).expect("decodes");
            let wanted = pb::BatchCheckEligibilityResponse {
                decisions: expected,
                summary: Some(convert::summary_to_pb(&summary)),
            };
            assert_eq!(decoded, wanted, "{view:?}");
            // Byte for byte what prost writes.
            assert_eq!(bytes, wanted.encode_to_vec(), "{view:?}");
        }
    }
}
