//! Codecs: how a table's values become bytes and back.

use std::marker::PhantomData;

use crate::StateError;

/// Encodes and decodes the values of one table.
///
/// Encodings must be stable across releases of sluice: they are what the state directory holds.
pub trait Codec {
    /// The value type.
    type Value;
    /// Appends the encoding of `value` to `out`.
    fn encode(value: &Self::Value, out: &mut Vec<u8>);
    /// Decodes a value written by [`Codec::encode`].
    ///
    /// # Errors
    /// A reason string when the bytes are not a valid encoding.
    fn decode(bytes: &[u8]) -> Result<Self::Value, String>;
}

/// Raw bytes, stored as they are.
#[derive(Debug)]
pub struct BytesCodec;
impl Codec for BytesCodec {
    type Value = Vec<u8>;
    fn encode(value: &Vec<u8>, out: &mut Vec<u8>) {
        out.extend_from_slice(value);
    }
    fn decode(bytes: &[u8]) -> Result<Vec<u8>, String> {
        Ok(bytes.to_vec())
    }
}

fn fixed8(bytes: &[u8]) -> Result<[u8; 8], String> {
    bytes.try_into().map_err(|_| format!("expected 8 bytes, found {}", bytes.len()))
}

/// A `u64`, big-endian (so that byte order is numeric order).
#[derive(Debug)]
pub struct U64Codec;
impl Codec for U64Codec {
    type Value = u64;
    fn encode(value: &u64, out: &mut Vec<u8>) {
        out.extend_from_slice(&value.to_be_bytes());
    }
    fn decode(bytes: &[u8]) -> Result<u64, String> {
        Ok(u64::from_be_bytes(fixed8(bytes)?))
    }
}

/// An `i64`, big-endian with the sign bit flipped (so that byte order is numeric order).
#[derive(Debug)]
pub struct I64Codec;
impl Codec for I64Codec {
    type Value = i64;
    fn encode(value: &i64, out: &mut Vec<u8>) {
        out.extend_from_slice(&((*value as u64) ^ (1 << 63)).to_be_bytes());
    }
    fn decode(bytes: &[u8]) -> Result<i64, String> {
        Ok((u64::from_be_bytes(fixed8(bytes)?) ^ (1 << 63)) as i64)
    }
}

/// An `f64`, as its IEEE bits, little-endian.
#[derive(Debug)]
pub struct F64Codec;
impl Codec for F64Codec {
    type Value = f64;
    fn encode(value: &f64, out: &mut Vec<u8>) {
        out.extend_from_slice(&value.to_bits().to_le_bytes());
    }
    fn decode(bytes: &[u8]) -> Result<f64, String> {
        Ok(f64::from_bits(u64::from_le_bytes(fixed8(bytes)?)))
    }
}

/// Any serde type, as JSON. For small, rarely written values (metadata), not hot paths.
#[derive(Debug)]
pub struct JsonCodec<T>(PhantomData<T>);
impl<T: serde::Serialize + serde::de::DeserializeOwned> Codec for JsonCodec<T> {
    type Value = T;
    fn encode(value: &T, out: &mut Vec<u8>) {
        serde_json::to_writer(out, value).expect("invariant: serializing to a Vec cannot fail");
    }
    fn decode(bytes: &[u8]) -> Result<T, String> {
        serde_json::from_slice(bytes).map_err(|e| e.to_string())
    }
}

pub(crate) fn decode_in<C: Codec>(table: &str, bytes: &[u8]) -> Result<C::Value, StateError> {
    C::decode(bytes).map_err(|reason| StateError::Codec { table: table.to_string(), reason })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn roundtrip<C: Codec>(v: C::Value) -> C::Value {
        let mut buf = Vec::new();
        C::encode(&v, &mut buf);
        C::decode(&buf).unwrap()
    }

    #[test]
    fn i64_codec_keeps_numeric_order_in_bytes() {
        let mut a = Vec::new();
        let mut b = Vec::new();
        I64Codec::encode(&-5, &mut a);
        I64Codec::encode(&3, &mut b);
        assert!(a < b);
        assert_eq!(roundtrip::<I64Codec>(-5), -5);
        assert_eq!(roundtrip::<I64Codec>(i64::MIN), i64::MIN);
    }

    #[test]
    fn short_input_is_a_decode_error() {
        assert_eq!(U64Codec::decode(&[1, 2]).unwrap_err(), "expected 8 bytes, found 2");
    }
}
