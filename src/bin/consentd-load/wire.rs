//! Requests encoded once, answers skimmed rather than decoded.
//!
//! The load generator shares the machine's cores with the server it
//! measures, so what it spends per call must be small and the same for every
//! server. Requests are encoded with prost once, before measuring, and sent as
//! raw bytes ([`Raw`] is a tonic codec whose encoder copies bytes). Answers
//! are never materialised as prost structs (10,000 `Decision`s with their
//! strings per batch would cost the client more than a fast server spends on
//! them): a skim function walks the message's top level, counts the
//! decisions and reads the summaries, and the mode checks those counts
//! against what it sent, so that a server cannot look fast by answering
//! less.

use std::marker::PhantomData;

use prost::bytes::{Buf, BufMut, Bytes};
use tonic::{
    Status,
    codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder},
};

/// A tonic codec that sends pre-encoded messages and skims answers with
/// `skim` into a `T`.
#[derive(Debug)]
pub(crate) struct Raw<T> {
    skim: fn(&[u8]) -> Result<T, String>,
}

impl<T> Raw<T> {
    pub(crate) fn new(skim: fn(&[u8]) -> Result<T, String>) -> Self {
        Self { skim }
    }
}

impl<T> Clone for Raw<T> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<T> Copy for Raw<T> {}

impl<T: Send + 'static> Codec for Raw<T> {
    type Encode = Bytes;
    type Decode = T;
    type Encoder = BytesEncoder;
    type Decoder = Skimmer<T>;

    fn encoder(&mut self) -> Self::Encoder {
        BytesEncoder
    }

    fn decoder(&mut self) -> Self::Decoder {
        Skimmer {
            skim: self.skim,
            _answer: PhantomData,
        }
    }
}

/// Copies a pre-encoded message into tonic's frame buffer.
#[derive(Debug)]
pub(crate) struct BytesEncoder;

impl Encoder for BytesEncoder {
    type Item = Bytes;
    type Error = Status;

    fn encode(&mut self, item: Bytes, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        dst.reserve(item.len());
        dst.put_slice(&item);
        Ok(())
    }
}

/// Runs the skim function on each answer's bytes.
#[derive(Debug)]
pub(crate) struct Skimmer<T> {
    skim: fn(&[u8]) -> Result<T, String>,
    _answer: PhantomData<fn() -> T>,
}

impl<T> Decoder for Skimmer<T> {
    type Item = T;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<T>, Status> {
        let len = src.remaining();
        // tonic gathers a whole message in one contiguous buffer; copy only
        // if that ever changes.
        let skimmed = if src.chunk().len() == len {
            (self.skim)(src.chunk())
        } else {
            (self.skim)(&src.copy_to_bytes(len))
        };
        src.advance(src.remaining());
        skimmed
            .map(Some)
            .map_err(|e| Status::internal(format!("consentd-load: answer not understood: {e}")))
    }
}

// ---------------------------------------------------------------------------
// The protobuf wire format, top level only
// ---------------------------------------------------------------------------

/// One field's value as it is on the wire.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Value<'a> {
    Varint(u64),
    Bytes(&'a [u8]),
    /// A 32- or 64-bit fixed-width value (never read here).
    Fixed,
}

/// The fields of one message, in wire order, without descending into them.
pub(crate) fn fields(message: &[u8]) -> Fields<'_> {
    Fields { rest: message }
}

/// Iterator of `(field number, value)`; see [`fields`].
#[derive(Debug)]
pub(crate) struct Fields<'a> {
    rest: &'a [u8],
}

fn varint(buf: &mut &[u8]) -> Result<u64, String> {
    let mut value = 0u64;
    for shift in (0..64).step_by(7) {
        let (&byte, rest) = buf.split_first().ok_or("truncated varint")?;
        *buf = rest;
        value |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Ok(value);
        }
    }
    Err("varint longer than 10 bytes".to_owned())
}

fn take<'a>(buf: &mut &'a [u8], len: usize) -> Result<&'a [u8], String> {
    if buf.len() < len {
        return Err(format!("field of {len} bytes, {} left", buf.len()));
    }
    let (head, rest) = buf.split_at(len);
    *buf = rest;
    Ok(head)
}

impl<'a> Fields<'a> {
    fn read(&mut self) -> Result<(u32, Value<'a>), String> {
        let key = varint(&mut self.rest)?;
        let number = u32::try_from(key >> 3).map_err(|_| format!("field number {}", key >> 3))?;
        let value = match key & 7 {
            0 => Value::Varint(varint(&mut self.rest)?),
            1 => {
                take(&mut self.rest, 8)?;
                Value::Fixed
            }
            2 => {
                let len = usize::try_from(varint(&mut self.rest)?)
                    .map_err(|_| "length does not fit".to_owned())?;
                Value::Bytes(take(&mut self.rest, len)?)
            }
            5 => {
                take(&mut self.rest, 4)?;
                Value::Fixed
            }
            wire => return Err(format!("field {number}: wire type {wire} not expected")),
        };
        Ok((number, value))
    }
}

impl<'a> Iterator for Fields<'a> {
    type Item = Result<(u32, Value<'a>), String>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.rest.is_empty() {
            return None;
        }
        let item = self.read();
        if item.is_err() {
            // Stop after the first error.
            self.rest = &[];
        }
        Some(item)
    }
}

// ---------------------------------------------------------------------------
// The answers of consent.v1
// ---------------------------------------------------------------------------

/// An `EligibilitySummary`.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Summary {
    pub(crate) total: u64,
    pub(crate) eligible: u64,
    pub(crate) excluded: u64,
    /// Sum of `excluded_by_reason` counts.
    pub(crate) excluded_by_reason: u64,
}

impl Summary {
    fn skim(message: &[u8]) -> Result<Self, String> {
        let mut summary = Summary::default();
        for field in fields(message) {
            match field? {
                (1, Value::Varint(v)) => summary.total = v,
                (2, Value::Varint(v)) => summary.eligible = v,
                (3, Value::Varint(v)) => summary.excluded = v,
                (4, Value::Bytes(reason_count)) => {
                    for field in fields(reason_count) {
                        if let (2, Value::Varint(count)) = field? {
                            summary.excluded_by_reason += count;
                        }
                    }
                }
                _ => {}
            }
        }
        if summary.eligible + summary.excluded != summary.total {
            return Err(format!(
                "summary: eligible {} + excluded {} != total {}",
                summary.eligible, summary.excluded, summary.total
            ));
        }
        if summary.excluded_by_reason != summary.excluded {
            return Err(format!(
                "summary: excluded_by_reason adds up to {}, excluded is {}",
                summary.excluded_by_reason, summary.excluded
            ));
        }
        Ok(summary)
    }
}

/// A `BatchCheckEligibilityResponse` or a `StreamEligibilityResponse`: its
/// decisions counted, its summaries read.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct Decisions {
    /// Bytes of the message.
    pub(crate) bytes: usize,
    /// Entries of `decisions` (field 1).
    pub(crate) decisions: u64,
    /// `summary` of a batch, `chunk_summary` of a stream (field 2).
    pub(crate) summary: Summary,
    /// `total_summary` of a stream (field 3); zero for a batch.
    pub(crate) total: Summary,
}

/// Skims a `BatchCheckEligibilityResponse` or `StreamEligibilityResponse`
/// (they share field numbers 1 and 2; 3 is the stream's running total). The
/// summary must count the decisions.
pub(crate) fn skim_decisions(message: &[u8]) -> Result<Decisions, String> {
    let mut answer = Decisions {
        bytes: message.len(),
        ..Decisions::default()
    };
    let mut summary = None;
    for field in fields(message) {
        match field? {
            (1, Value::Bytes(_)) => answer.decisions += 1,
            (2, Value::Bytes(s)) => summary = Some(Summary::skim(s)?),
            (3, Value::Bytes(s)) => answer.total = Summary::skim(s)?,
            _ => {}
        }
    }
    answer.summary = summary.ok_or("no summary")?;
    if answer.summary.total != answer.decisions {
        return Err(format!(
            "{} decisions, but the summary counts {}",
            answer.decisions, answer.summary.total
        ));
    }
    Ok(answer)
}

/// A `CheckEligibilityResponse`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct OneDecision {
    pub(crate) eligible: bool,
}

/// Skims a `CheckEligibilityResponse`: exactly one decision, with a profile id.
pub(crate) fn skim_check(message: &[u8]) -> Result<OneDecision, String> {
    let mut decision = None;
    for field in fields(message) {
        if let (1, Value::Bytes(d)) = field? {
            if decision.is_some() {
                return Err("more than one decision".to_owned());
            }
            decision = Some(d);
        }
    }
    let decision = decision.ok_or("no decision")?;
    let (mut eligible, mut has_id) = (false, false);
    for field in fields(decision) {
        match field? {
            (1, Value::Bytes(id)) => has_id = !id.is_empty(),
            (2, Value::Varint(v)) => eligible = v != 0,
            _ => {}
        }
    }
    if !has_id {
        return Err("a decision without its profile id".to_owned());
    }
    Ok(OneDecision { eligible })
}

/// A `RecordDeliveryFeedbackResponse`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Recorded {
    /// `recorded` (field 1): false for an event id already recorded.
    pub(crate) recorded: bool,
    /// `applied_in_arrival_order` (field 3): beyond the late-event horizon.
    pub(crate) in_arrival_order: bool,
}

/// Skims a `RecordDeliveryFeedbackResponse`.
pub(crate) fn skim_feedback(message: &[u8]) -> Result<Recorded, String> {
    let mut answer = Recorded {
        recorded: false,
        in_arrival_order: false,
    };
    for field in fields(message) {
        match field? {
            (1, Value::Varint(v)) => answer.recorded = v != 0,
            (3, Value::Varint(v)) => answer.in_arrival_order = v != 0,
            _ => {}
        }
    }
    Ok(answer)
}

#[cfg(test)]
mod tests {
    use consentd::pb;
    use prost::Message as _;

    use super::*;

    fn decision(id: &str, eligible: bool) -> pb::Decision {
        pb::Decision {
            profile_id: id.to_owned(),
            eligible,
            reasons: if eligible { vec![] } else { vec![2] },
            addresses: if eligible {
                vec![format!("{id}@example.com")]
            } else {
                vec![]
            },
        }
    }

    #[test]
    fn a_batch_answer_is_counted_as_prost_decodes_it() {
        let answer = pb::BatchCheckEligibilityResponse {
            decisions: vec![
                decision("1", true),
                decision("2", false),
                decision("3", true),
            ],
            summary: Some(pb::EligibilitySummary {
                total: 3,
                eligible: 2,
                excluded: 1,
                excluded_by_reason: vec![pb::ReasonCount {
                    reason: 2,
                    count: 1,
                }],
            }),
        };
        let bytes = answer.encode_to_vec();
        let skimmed = skim_decisions(&bytes).expect("valid");
        assert_eq!(skimmed.decisions, 3);
        assert_eq!(skimmed.summary.eligible, 2);
        assert_eq!(skimmed.bytes, bytes.len());
    }

    #[test]
    fn an_answer_that_does_not_add_up_is_refused() {
        let short = pb::BatchCheckEligibilityResponse {
            decisions: vec![decision("1", true)],
            summary: Some(pb::EligibilitySummary {
                total: 2,
                eligible: 2,
                ..Default::default()
            }),
        };
        let err = skim_decisions(&short.encode_to_vec()).expect_err("1 != 2");
        assert!(err.contains("1 decisions"), "{err}");
        let no_summary = pb::BatchCheckEligibilityResponse {
            decisions: vec![decision("1", true)],
            summary: None,
        };
        assert!(skim_decisions(&no_summary.encode_to_vec()).is_err());
        let truncated = short.encode_to_vec();
        assert!(skim_decisions(&truncated[..truncated.len() - 1]).is_err());
    }

    #[test]
    fn stream_check_and_feedback_answers_are_read() {
        let chunk = pb::StreamEligibilityResponse {
            decisions: vec![decision("1", true)],
            chunk_summary: Some(pb::EligibilitySummary {
                total: 1,
                eligible: 1,
                ..Default::default()
            }),
            total_summary: Some(pb::EligibilitySummary {
                total: 5,
                eligible: 5,
                ..Default::default()
            }),
        };
        let skimmed = skim_decisions(&chunk.encode_to_vec()).expect("valid");
        assert_eq!((skimmed.decisions, skimmed.total.total), (1, 5));

        let check = pb::CheckEligibilityResponse {
            decision: Some(decision("7", true)),
        };
        assert!(skim_check(&check.encode_to_vec()).expect("valid").eligible);
        assert!(skim_check(&[]).is_err());

        let feedback = pb::RecordDeliveryFeedbackResponse {
            recorded: true,
            applied_in_arrival_order: true,
            ..Default::default()
        };
        let read = skim_feedback(&feedback.encode_to_vec()).expect("valid");
        assert!(read.recorded && read.in_arrival_order);
    }
}
