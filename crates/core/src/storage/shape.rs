//! Serializers that recognise one shape of value and refuse every other, so that
//! [`super::reuse`] can write the two shapes that dominate a group's message secrets
//! without going through postcard's serializer one element at a time:
//!
//! - [`write_nones`]: a sequence of `None`s. A reader's window of skipped keys for a sender
//!   (openmls' `DecryptionRatchet::past_secrets`, up to `OUT_OF_ORDER_TOLERANCE` = 4,096
//!   entries) gains one `None` for every message read in order, so in steady state it is
//!   thousands of them, written on every message read.
//! - [`write_bytes`]: a sequence of `u8` with its length known up front (`Vec<u8>`, the
//!   bytes of every secret, key and context).
//!
//! Through postcard's serializer each element is a byte stored behind a length that the
//! next element reloads from memory, about 2 ns an element (5 cycles of store-to-load
//! forwarding): about 9 µs a message for the window, 5 µs for the byte strings. Here the
//! count or the position stays in a register. A value of any other shape is refused at
//! its first element, and written as before.

use serde::ser::{self, Serialize};

use postcard::ser_flavors::Flavor as _;

use super::reuse::Postcard;

/// Why a shape serializer stopped: the value does not have its shape.
#[derive(Debug)]
pub(super) struct Refused;

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("not the shape looked for")
    }
}

impl std::error::Error for Refused {}

impl ser::Error for Refused {
    fn custom<M: std::fmt::Display>(_: M) -> Self {
        Refused
    }
}

/// The compound serializers that no shape here takes.
type Never<T> = ser::Impossible<T, Refused>;

/// What a shape serializer takes; every method not overridden refuses.
trait Accepts: Sized {
    type Ok;
    type Seq: ser::SerializeSeq<Ok = Self::Ok, Error = Refused>;
    fn seq(self, _len: Option<usize>) -> Result<Self::Seq, Refused> {
        Err(Refused)
    }
    fn none(self) -> Result<Self::Ok, Refused> {
        Err(Refused)
    }
    fn byte(self, _byte: u8) -> Result<Self::Ok, Refused> {
        Err(Refused)
    }
}

/// The methods that refuse whatever they are given (inlined: the `None` counter's loop
/// meets a refusal at every `Some`).
macro_rules! refuse {
    ($($name:ident $(<$g:ident: $bound:path>)? ($($arg:ty),*) -> $ret:ty;)*) => {$(
        #[inline]
        fn $name $(<$g: $bound + ?Sized>)? (self, $(_: $arg),*) -> Result<$ret, Refused> {
            Err(Refused)
        }
    )*};
}

/// `serde::Serializer` for a type that [`Accepts`] some calls.
macro_rules! shape_serializer {
    (<$($lt:lifetime),*> $t:ty) => {
        impl<$($lt),*> ser::Serializer for $t {
            type Ok = <$t as Accepts>::Ok;
            type Error = Refused;
            type SerializeSeq = <$t as Accepts>::Seq;
            type SerializeTuple = Never<Self::Ok>;
            type SerializeTupleStruct = Never<Self::Ok>;
            type SerializeTupleVariant = Never<Self::Ok>;
            type SerializeMap = Never<Self::Ok>;
            type SerializeStruct = Never<Self::Ok>;
            type SerializeStructVariant = Never<Self::Ok>;

            // As postcard: a type that encodes otherwise for people takes the same branch.
            fn is_human_readable(&self) -> bool {
                false
            }

            #[inline(always)]
            fn serialize_u8(self, byte: u8) -> Result<Self::Ok, Refused> {
                Accepts::byte(self, byte)
            }
            #[inline(always)]
            fn serialize_none(self) -> Result<Self::Ok, Refused> {
                Accepts::none(self)
            }
            fn serialize_seq(self, len: Option<usize>) -> Result<Self::SerializeSeq, Refused> {
                Accepts::seq(self, len)
            }

            refuse! {
                serialize_bool(bool) -> Self::Ok;
                serialize_i8(i8) -> Self::Ok;
                serialize_i16(i16) -> Self::Ok;
                serialize_i32(i32) -> Self::Ok;
                serialize_i64(i64) -> Self::Ok;
                serialize_u16(u16) -> Self::Ok;
                serialize_u32(u32) -> Self::Ok;
                serialize_u64(u64) -> Self::Ok;
                serialize_f32(f32) -> Self::Ok;
                serialize_f64(f64) -> Self::Ok;
                serialize_char(char) -> Self::Ok;
                serialize_str(&str) -> Self::Ok;
                serialize_bytes(&[u8]) -> Self::Ok;
                serialize_unit() -> Self::Ok;
                serialize_unit_struct(&'static str) -> Self::Ok;
                serialize_unit_variant(&'static str, u32, &'static str) -> Self::Ok;
                serialize_some<V: Serialize>(&V) -> Self::Ok;
                serialize_newtype_struct<V: Serialize>(&'static str, &V) -> Self::Ok;
                serialize_newtype_variant<V: Serialize>(&'static str, u32, &'static str, &V) -> Self::Ok;
                collect_str<V: std::fmt::Display>(&V) -> Self::Ok;
                serialize_tuple(usize) -> Never<Self::Ok>;
                serialize_tuple_struct(&'static str, usize) -> Never<Self::Ok>;
                serialize_tuple_variant(&'static str, u32, &'static str, usize) -> Never<Self::Ok>;
                serialize_map(Option<usize>) -> Never<Self::Ok>;
                serialize_struct(&'static str, usize) -> Never<Self::Ok>;
                serialize_struct_variant(&'static str, u32, &'static str, usize) -> Never<Self::Ok>;
            }
        }
    };
    ($t:ty) => {
        shape_serializer!(<> $t);
    };
}

/// The length of `value` if it is a sequence of `None`s only.
pub(super) fn all_none<T: Serialize + ?Sized>(value: &T) -> Option<usize> {
    value.serialize(NoneCounter).ok()
}

/// Takes a sequence and counts its elements while each is `None`.
struct NoneCounter;

/// The count of [`NoneCounter`]'s sequence so far.
struct CountNones(usize);

/// One element that must be `None`.
struct OnlyNone;

impl Accepts for NoneCounter {
    type Ok = usize;
    type Seq = CountNones;
    fn seq(self, _len: Option<usize>) -> Result<CountNones, Refused> {
        Ok(CountNones(0))
    }
}

impl ser::SerializeSeq for CountNones {
    type Ok = usize;
    type Error = Refused;
    #[inline(always)]
    fn serialize_element<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), Refused> {
        value.serialize(OnlyNone)?;
        self.0 += 1;
        Ok(())
    }
    fn end(self) -> Result<usize, Refused> {
        Ok(self.0)
    }
}

impl Accepts for OnlyNone {
    type Ok = ();
    type Seq = Never<()>;
    #[inline(always)]
    fn none(self) -> Result<(), Refused> {
        Ok(())
    }
}

/// Takes a sequence of `u8` whose length is known before its first element: writes the
/// length as postcard does, then each byte in its place.
struct ByteString<'b>(&'b mut Postcard);

/// [`ByteString`]'s bytes, written in place.
struct Bytes<'b> {
    out: &'b mut [u8],
    at: usize,
}

/// One element that must be a `u8`.
struct OneByte;

impl<'b> Accepts for ByteString<'b> {
    type Ok = ();
    type Seq = Bytes<'b>;
    fn seq(self, len: Option<usize>) -> Result<Bytes<'b>, Refused> {
        let len = len.ok_or(Refused)?;
        ser::Serializer::serialize_seq(&mut *self.0, Some(len)).map_err(|_| Refused)?;
        let start = self.0.output.0.len();
        push_zeros(self.0, len).map_err(|_| Refused)?;
        let out = self.0.output.0.get_mut(start..).ok_or(Refused)?;
        Ok(Bytes { out, at: 0 })
    }
}

impl ser::SerializeSeq for Bytes<'_> {
    type Ok = ();
    type Error = Refused;
    #[inline(always)]
    fn serialize_element<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), Refused> {
        let byte = value.serialize(OneByte)?;
        *self.out.get_mut(self.at).ok_or(Refused)? = byte;
        self.at += 1;
        Ok(())
    }
    fn end(self) -> Result<(), Refused> {
        (self.at == self.out.len()).then_some(()).ok_or(Refused)
    }
}

impl Accepts for OneByte {
    type Ok = u8;
    type Seq = Never<u8>;
    #[inline(always)]
    fn byte(self, byte: u8) -> Result<u8, Refused> {
        Ok(byte)
    }
}

shape_serializer!(NoneCounter);
shape_serializer!(OnlyNone);
shape_serializer!(OneByte);
shape_serializer!(<'b> ByteString<'b>);

/// Zeros to copy from.
static ZEROS: [u8; 512] = [0; 512];

fn push_zeros(out: &mut Postcard, n: usize) -> postcard::Result<()> {
    let mut left = n;
    while left > 0 {
        let run = left.min(ZEROS.len());
        out.output.try_extend(&ZEROS[..run])?;
        left -= run;
    }
    Ok(())
}

/// Writes `value` as postcard would if it is a sequence of `None`s, and says whether it was.
pub(super) fn write_nones<T: Serialize + ?Sized>(out: &mut Postcard, value: &T) -> postcard::Result<bool> {
    let Some(n) = all_none(value) else {
        return Ok(false);
    };
    let start = out.output.0.len();
    // postcard: the length as a varint, then a 0 byte for each `None`.
    ser::Serializer::serialize_seq(&mut *out, Some(n))?;
    push_zeros(out, n)?;
    same_as_postcard(out, start, value)?;
    Ok(true)
}

/// Writes `value` as postcard would if it is a byte string, and says whether it was
/// (otherwise `out` is as it was).
pub(super) fn write_bytes<T: Serialize + ?Sized>(out: &mut Postcard, value: &T) -> postcard::Result<bool> {
    let start = out.output.0.len();
    if value.serialize(ByteString(out)).is_err() {
        // What a refused value left is dropped (and zeroed with the value's spare room).
        out.output.0.truncate(start);
        return Ok(false);
    }
    same_as_postcard(out, start, value)?;
    Ok(true)
}

/// Debug builds (every test) check that what was written from `start` is postcard's.
#[cfg_attr(not(debug_assertions), allow(unused_variables))]
fn same_as_postcard<T: Serialize + ?Sized>(out: &Postcard, start: usize, value: &T) -> postcard::Result<()> {
    #[cfg(debug_assertions)]
    {
        let again = postcard::to_allocvec(value)?;
        debug_assert!(
            out.output.0.get(start..) == Some(&again[..]),
            "a value written by its shape differs from postcard's encoding"
        );
    }
    Ok(())
}
