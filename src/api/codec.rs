//! The protobuf codec of every consent.v1 service (set in `build.rs` with
//! `codec_path`): prost's, except that a request that does not decode — bytes
//! that are not protobuf, a string field that is not UTF-8 — is the client's
//! mistake, `INVALID_ARGUMENT` with `ErrorInfo` and a `BadRequest` naming the
//! field, where prost's codec answers `INTERNAL` without details.
//!
//! The generated clients use the same codec; an answer that does not decode
//! there stays `INTERNAL`, as with prost's codec (it is the server's mistake,
//! not the caller's).

use std::marker::PhantomData;

use prost::Message;
use tonic::{
    Status,
    codec::{BufferSettings, DecodeBuf, Decoder, EncodeBuf, Encoder},
};

use crate::error::{Error, FieldViolation};

/// Prost's encoding, with [`RequestDecoder`] for decoding.
#[derive(Debug, Clone)]
pub(crate) struct Codec<T, U>(PhantomData<(T, U)>);

impl<T, U> Default for Codec<T, U> {
    fn default() -> Self {
        Self(PhantomData)
    }
}

impl<T, U> tonic::codec::Codec for Codec<T, U>
where
    T: Message + Send + 'static,
    U: Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = MessageEncoder<T>;
    type Decoder = RequestDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        MessageEncoder(PhantomData)
    }

    fn decoder(&mut self) -> Self::Decoder {
        RequestDecoder(PhantomData)
    }
}

/// Encodes a prost message, as prost's codec does.
#[derive(Debug)]
pub(crate) struct MessageEncoder<T>(PhantomData<T>);

impl<T: Message> Encoder for MessageEncoder<T> {
    type Item = T;
    type Error = Status;

    fn encode(&mut self, item: T, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        item.encode(dst)
            .map_err(|e| Status::internal(format!("cannot encode the message: {e}")))
    }

    fn buffer_settings(&self) -> BufferSettings {
        BufferSettings::default()
    }
}

/// Decodes a prost message; a request that does not decode is `INVALID_ARGUMENT`.
#[derive(Debug)]
pub(crate) struct RequestDecoder<U>(PhantomData<U>);

impl<U: Message + Default> Decoder for RequestDecoder<U> {
    type Item = U;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<U>, Status> {
        decode::<U>(src).map(Some)
    }

    fn buffer_settings(&self) -> BufferSettings {
        BufferSettings::default()
    }
}

/// Decodes one `U`; errors as the server answers them.
pub(crate) fn decode<U: Message + Default>(buf: impl bytes::Buf) -> Result<U, Status> {
    U::decode(buf).map_err(|e| {
        if is_request::<U>() {
            Status::from(decode_error(&e))
        } else {
            Status::internal(e.to_string())
        }
    })
}

/// Whether `U` is a request message: buf's STANDARD lint holds every RPC's
/// input to the name `…Request`, and no answer is named so.
fn is_request<U>() -> bool {
    std::any::type_name::<U>().ends_with("Request")
}

/// The description prost gives a string field that is not UTF-8.
const NOT_UTF8: &str = "invalid string value: data is not UTF-8 encoded";

/// A request that does not decode, as an invalid argument naming the field
/// prost names (`context.actor`), or `request` when it names none.
pub(crate) fn decode_error(error: &prost::DecodeError) -> Error {
    // prost keeps the field path private; its Display is
    // "failed to decode Protobuf message: Inner.field: Outer.field: description",
    // innermost first.
    let text = error.to_string();
    let mut rest = text
        .strip_prefix("failed to decode Protobuf message: ")
        .unwrap_or(&text);
    let mut path = Vec::new();
    while let Some((location, tail)) = rest.split_once(": ") {
        let Some((message, field)) = location.split_once('.') else {
            break;
        };
        let name =
            |s: &str| !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        let field = field.trim_start_matches("r#");
        if !name(message) || !name(field) {
            break;
        }
        path.push(field);
        rest = tail;
    }
    path.reverse();
    let field = if path.is_empty() {
        "request".to_owned()
    } else {
        path.join(".")
    };
    let description = if rest == NOT_UTF8 {
        "is not valid UTF-8".to_owned()
    } else {
        format!("is not a valid protobuf message: {rest}")
    };
    Error::InvalidArgument(vec![FieldViolation::new(field, description)])
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use tonic::Code;
    use tonic_types::StatusExt;

    use super::*;
    use crate::pb;

    fn violations(status: &Status) -> Vec<(String, String)> {
        status
            .get_details_bad_request()
            .expect("a BadRequest")
            .field_violations
            .into_iter()
            .map(|v| (v.field, v.description))
            .collect()
    }

    #[test]
    fn a_string_that_is_not_utf8_is_invalid_argument_naming_its_path() {
        // UpsertProfileRequest.context (7) { ChangeContext.actor (2): "\xff" }.
        let bytes = Bytes::from_static(&[0x0a, 0x01, b't', 0x3a, 0x03, 0x12, 0x01, 0xff]);
        let status = decode::<pb::UpsertProfileRequest>(bytes).expect_err("not UTF-8");
        assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
        let info = status.get_details_error_info().expect("ErrorInfo");
        assert_eq!(
            (info.domain.as_str(), info.reason.as_str()),
            ("consentd", "VALIDATION_FAILED")
        );
        assert_eq!(
            violations(&status),
            [("context.actor".to_owned(), "is not valid UTF-8".to_owned())]
        );
    }

    #[test]
    fn bytes_that_are_not_protobuf_are_invalid_argument() {
        // A key with wire type 7, which does not exist.
        let bytes = Bytes::from_static(&[0x0f]);
        let status = decode::<pb::GetProfileRequest>(bytes).expect_err("not protobuf");
        assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
        let found = violations(&status);
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!(found[0].0, "request");
        assert!(found[0].1.contains("wire type"), "{found:?}");
    }

    #[test]
    fn an_answer_that_does_not_decode_stays_internal() {
        let bytes = Bytes::from_static(&[0x0a, 0x01, 0xff]);
        let status = decode::<pb::GetProfileResponse>(bytes).expect_err("not protobuf");
        assert_eq!(status.code(), Code::Internal, "{status:?}");
    }

    #[test]
    fn a_message_that_decodes_is_returned() {
        let request = pb::GetProfileRequest {
            tenant: "t".to_owned(),
            profile_id: "p".to_owned(),
        };
        let bytes = Bytes::from(request.encode_to_vec());
        assert_eq!(
            decode::<pb::GetProfileRequest>(bytes).expect("decodes"),
            request
        );
    }
}
