//! Writing a group's message secrets without encoding again what cannot have
//! changed: the member lists of its past epochs.
//!
//! openmls hands the store its whole `MessageSecretsStore` after every message
//! sent or processed. Most of its bytes are, for each past epoch
//! (`EpochTree`), that epoch's member list (`leaves`), whose HPKE keys serde
//! hands to postcard one byte at a time: about 15 % of a message's cost
//! (BENCHMARKS.md, "Per-message cost").
//!
//! A past epoch's member list is a function of that epoch's group context,
//! which precedes it in the same `EpochTree` (`message_secrets.serialized_context`):
//! the context holds the tree hash, which covers every leaf of the tree. So
//! [`encode`] notes where each member list lies in the bytes it writes, keyed
//! by the encoding of its context, and the next write of the same group
//! copies those bytes from the stored value instead of encoding the list
//! again. Everything else is encoded as before, by postcard.
//!
//! **The stored bytes do not change**: they are the ones postcard would write
//! (each copy comes from postcard's encoding of a list with the same context).
//! Debug builds, so every test, encode each re-used list again and check that
//! the bytes are equal. The notes live in memory only; a store rebuilt from a
//! snapshot starts without them and its first write encodes everything.
//! If openmls renames these structures, nothing is re-used and every write
//! is a plain postcard encoding.

use std::ops::Range;

use postcard::ser_flavors::Flavor as _;
use serde::ser::{self, Serialize};

use super::{shape, StoreError, Value, ZeroizingVec};

pub(super) type Postcard = postcard::Serializer<ZeroizingVec>;

/// Where each past epoch's member list lies in a stored value: the encoding
/// of the epoch's group context, and the bytes of its member list.
pub(super) type Notes = Vec<(Vec<u8>, Range<usize>)>;

/// Encodes `value` as postcard does, copying from `old` (the value stored
/// before, whose member lists lie at `old_notes`) each member list whose
/// context is noted there. Returns the bytes and their notes.
pub(super) fn encode(
    value: &(impl Serialize + ?Sized),
    old: &[u8],
    old_notes: &Notes,
) -> Result<(Value, Notes), StoreError> {
    let mut out = Postcard {
        output: ZeroizingVec::with_capacity(old.len()),
    };
    let mut state = State {
        old,
        old_notes,
        notes: Vec::new(),
        context: None,
    };
    value
        .serialize(Tap {
            out: &mut out,
            state: &mut state,
        })
        .map_err(|_| StoreError::Encode)?;
    let notes = state.notes;
    let bytes = out.output.finalize().map_err(|_| StoreError::Encode)?;
    Ok((bytes, notes))
}

struct State<'a> {
    old: &'a [u8],
    old_notes: &'a Notes,
    notes: Notes,
    /// The encoding of the group context last seen inside the current
    /// `EpochTree`.
    context: Option<Vec<u8>>,
}

impl State<'_> {
    /// The bytes of the member list whose context is `context`, if noted.
    fn noted(&self, context: &[u8]) -> Option<&[u8]> {
        self.old_notes
            .iter()
            .find(|(c, _)| c == context)
            .and_then(|(_, range)| self.old.get(range.clone()))
    }
}

/// postcard's serializer, which watches two fields go by.
struct Tap<'s, 'a> {
    out: &'s mut Postcard,
    state: &'s mut State<'a>,
}

/// The compound types of [`Tap`]; `name` is the struct's, if it is one.
struct Compound<'s, 'a> {
    out: &'s mut Postcard,
    state: &'s mut State<'a>,
    name: &'static str,
}

impl<'s, 'a> Compound<'s, 'a> {
    #[inline]
    fn tap(&mut self) -> Tap<'_, 'a> {
        Tap {
            out: self.out,
            state: self.state,
        }
    }

    fn position(&self) -> usize {
        self.out.output.0.len()
    }

    fn field<T: Serialize + ?Sized>(&mut self, key: &'static str, value: &T) -> postcard::Result<()> {
        match (self.name, key) {
            ("MessageSecrets", "serialized_context") => {
                let start = self.position();
                if !shape::write_bytes(self.out, value)? {
                    value.serialize(self.tap())?;
                }
                let end = self.position();
                self.state.context = self.out.output.0.get(start..end).map(<[u8]>::to_vec);
                Ok(())
            }
            ("DecryptionRatchet", "past_secrets") => {
                if shape::write_nones(self.out, value)? {
                    return Ok(());
                }
                value.serialize(self.tap())
            }
            ("EpochTree", "leaves") => {
                // An empty context (one byte: its length, 0) binds nothing.
                let Some(context) = self.state.context.take().filter(|c| c.len() > 1) else {
                    return value.serialize(self.tap());
                };
                let start = self.position();
                if let Some(noted) = self.state.noted(&context) {
                    self.out.output.try_extend(noted)?;
                    #[cfg(debug_assertions)]
                    {
                        let again = postcard::to_allocvec(value)?;
                        debug_assert!(again == noted, "a re-used member list differs from its encoding");
                    }
                } else {
                    value.serialize(self.tap())?;
                }
                let end = self.position();
                self.state.notes.push((context, start..end));
                Ok(())
            }
            _ => {
                if shape::write_bytes(self.out, value)? {
                    return Ok(());
                }
                value.serialize(self.tap())
            }
        }
    }
}

/// The [`Tap`]'s methods for values that hold no nested value: each hands its value to
/// postcard unchanged.
macro_rules! forward {
    ($($name:ident: $t:ty,)*) => {
        $(
            #[inline(always)]
            fn $name(self, v: $t) -> postcard::Result<()> {
                self.out.$name(v)
            }
        )*
    };
}

impl<'s, 'a> ser::Serializer for Tap<'s, 'a> {
    type Ok = ();
    type Error = postcard::Error;
    type SerializeSeq = Compound<'s, 'a>;
    type SerializeTuple = Compound<'s, 'a>;
    type SerializeTupleStruct = Compound<'s, 'a>;
    type SerializeTupleVariant = Compound<'s, 'a>;
    type SerializeMap = Compound<'s, 'a>;
    type SerializeStruct = Compound<'s, 'a>;
    type SerializeStructVariant = Compound<'s, 'a>;

    fn is_human_readable(&self) -> bool {
        false
    }

    // What holds no nested value goes to postcard as it is.
    forward! {
        serialize_bool: bool,
        serialize_i8: i8,
        serialize_i16: i16,
        serialize_i32: i32,
        serialize_i64: i64,
        serialize_i128: i128,
        serialize_u8: u8,
        serialize_u16: u16,
        serialize_u32: u32,
        serialize_u64: u64,
        serialize_u128: u128,
        serialize_f32: f32,
        serialize_f64: f64,
        serialize_char: char,
        serialize_str: &str,
        serialize_bytes: &[u8],
    }
    fn serialize_none(self) -> postcard::Result<()> {
        self.out.serialize_none()
    }
    fn serialize_some<T: Serialize + ?Sized>(self, value: &T) -> postcard::Result<()> {
        self.out.serialize_u8(1)?;
        value.serialize(self)
    }
    fn serialize_unit(self) -> postcard::Result<()> {
        self.out.serialize_unit()
    }
    fn serialize_unit_struct(self, name: &'static str) -> postcard::Result<()> {
        self.out.serialize_unit_struct(name)
    }
    fn serialize_unit_variant(self, name: &'static str, index: u32, variant: &'static str) -> postcard::Result<()> {
        self.out.serialize_unit_variant(name, index, variant)
    }
    fn serialize_newtype_struct<T: Serialize + ?Sized>(self, _name: &'static str, value: &T) -> postcard::Result<()> {
        value.serialize(self)
    }
    fn serialize_newtype_variant<T: Serialize + ?Sized>(
        self,
        _name: &'static str,
        index: u32,
        _variant: &'static str,
        value: &T,
    ) -> postcard::Result<()> {
        // postcard writes the variant index as a u32 varint, then the value.
        self.out.serialize_u32(index)?;
        value.serialize(self)
    }
    fn serialize_seq(self, len: Option<usize>) -> postcard::Result<Compound<'s, 'a>> {
        self.out.serialize_seq(len)?;
        Ok(self.compound(""))
    }
    fn serialize_tuple(self, len: usize) -> postcard::Result<Compound<'s, 'a>> {
        self.out.serialize_tuple(len)?;
        Ok(self.compound(""))
    }
    fn serialize_tuple_struct(self, name: &'static str, len: usize) -> postcard::Result<Compound<'s, 'a>> {
        self.out.serialize_tuple_struct(name, len)?;
        Ok(self.compound(""))
    }
    fn serialize_tuple_variant(
        self,
        name: &'static str,
        index: u32,
        variant: &'static str,
        len: usize,
    ) -> postcard::Result<Compound<'s, 'a>> {
        self.out.serialize_tuple_variant(name, index, variant, len)?;
        Ok(self.compound(""))
    }
    fn serialize_map(self, len: Option<usize>) -> postcard::Result<Compound<'s, 'a>> {
        self.out.serialize_map(len)?;
        Ok(self.compound(""))
    }
    fn serialize_struct(self, name: &'static str, len: usize) -> postcard::Result<Compound<'s, 'a>> {
        self.out.serialize_struct(name, len)?;
        if name == "EpochTree" {
            self.state.context = None;
        }
        Ok(self.compound(name))
    }
    fn serialize_struct_variant(
        self,
        name: &'static str,
        index: u32,
        variant: &'static str,
        len: usize,
    ) -> postcard::Result<Compound<'s, 'a>> {
        self.out.serialize_struct_variant(name, index, variant, len)?;
        Ok(self.compound(""))
    }
    fn collect_str<T: std::fmt::Display + ?Sized>(self, value: &T) -> postcard::Result<()> {
        self.out.collect_str(value)
    }
}

impl<'s, 'a> Tap<'s, 'a> {
    fn compound(self, name: &'static str) -> Compound<'s, 'a> {
        Compound {
            out: self.out,
            state: self.state,
            name,
        }
    }
}

/// The compounds of elements alone (sequences, tuples, tuple structs and variants): each
/// element through the tap.
macro_rules! elements {
    ($($kind:ident :: $method:ident),*) => {$(
        impl ser::$kind for Compound<'_, '_> {
            type Ok = ();
            type Error = postcard::Error;
            // Called once per byte of every byte string: inlined into serde's loop.
            #[inline]
            fn $method<T: Serialize + ?Sized>(&mut self, value: &T) -> postcard::Result<()> {
                value.serialize(self.tap())
            }
            fn end(self) -> postcard::Result<()> {
                Ok(())
            }
        }
    )*};
}

elements!(
    SerializeSeq::serialize_element,
    SerializeTuple::serialize_element,
    SerializeTupleStruct::serialize_field,
    SerializeTupleVariant::serialize_field
);

impl ser::SerializeMap for Compound<'_, '_> {
    type Ok = ();
    type Error = postcard::Error;
    fn serialize_key<T: Serialize + ?Sized>(&mut self, key: &T) -> postcard::Result<()> {
        key.serialize(self.tap())
    }
    fn serialize_value<T: Serialize + ?Sized>(&mut self, value: &T) -> postcard::Result<()> {
        value.serialize(self.tap())
    }
    fn end(self) -> postcard::Result<()> {
        Ok(())
    }
}

impl ser::SerializeStruct for Compound<'_, '_> {
    type Ok = ();
    type Error = postcard::Error;
    fn serialize_field<T: Serialize + ?Sized>(&mut self, key: &'static str, value: &T) -> postcard::Result<()> {
        self.field(key, value)
    }
    fn end(self) -> postcard::Result<()> {
        Ok(())
    }
}

impl ser::SerializeStructVariant for Compound<'_, '_> {
    type Ok = ();
    type Error = postcard::Error;
    fn serialize_field<T: Serialize + ?Sized>(&mut self, _key: &'static str, value: &T) -> postcard::Result<()> {
        value.serialize(self.tap())
    }
    fn end(self) -> postcard::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::collections::BTreeMap;

    use serde::Serialize;

    use super::*;

    // Stand-ins with the names and field order of openmls' structures.
    #[derive(Serialize, Clone)]
    struct MessageSecrets {
        sender_data_secret: Vec<u8>,
        serialized_context: Vec<u8>,
        added_at: Option<u64>,
    }

    #[derive(Serialize, Clone)]
    struct EpochTree {
        epoch: u64,
        message_secrets: MessageSecrets,
        leaves: Vec<Member>,
    }

    #[derive(Serialize, Clone)]
    struct Member {
        index: u32,
        credential: Credential,
        encryption_key: Vec<u8>,
    }

    #[derive(Serialize, Clone)]
    enum Credential {
        Basic(Vec<u8>),
        Other { kind: u16, bytes: (u8, Vec<u8>) },
        Unit,
    }

    #[derive(Serialize, Clone)]
    struct MessageSecretsStore {
        max_epochs: usize,
        past_epoch_trees: Vec<EpochTree>,
        message_secrets: MessageSecrets,
        extra: BTreeMap<String, (i64, f64, char, bool)>,
    }

    fn secrets(context: &[u8], n: u8) -> MessageSecrets {
        MessageSecrets {
            sender_data_secret: vec![n; 32],
            serialized_context: context.to_vec(),
            added_at: Some(u64::from(n) << 40),
        }
    }

    fn leaves(n: u8) -> Vec<Member> {
        (0..3)
            .map(|i| Member {
                index: i,
                credential: match i {
                    0 => Credential::Basic(vec![n; 40]),
                    1 => Credential::Other {
                        kind: 300,
                        bytes: (n, vec![i as u8; 5]),
                    },
                    _ => Credential::Unit,
                },
                encryption_key: vec![n ^ i as u8; 1216],
            })
            .collect()
    }

    fn store(epochs: std::ops::Range<u8>, current: u8) -> MessageSecretsStore {
        MessageSecretsStore {
            max_epochs: 4,
            past_epoch_trees: epochs
                .map(|e| EpochTree {
                    epoch: e.into(),
                    message_secrets: secrets(&[7, e], e),
                    leaves: leaves(e),
                })
                .collect(),
            message_secrets: secrets(&[7, current], current),
            extra: [("x".to_string(), (-5, 1.5, 'é', true))].into(),
        }
    }

    #[test]
    fn writes_what_postcard_writes() {
        let value = store(0..4, 4);
        let (first, notes) = encode(&value, &[], &Vec::new()).unwrap();
        assert_eq!(&first[..], &postcard::to_allocvec(&value).unwrap()[..]);
        assert_eq!(notes.len(), 4);
        for (i, (context, range)) in notes.iter().enumerate() {
            assert_eq!(context, &postcard::to_allocvec(&vec![7u8, i as u8]).unwrap());
            assert_eq!(
                &first[range.clone()],
                &postcard::to_allocvec(&leaves(i as u8)).unwrap()[..]
            );
        }

        // The next write copies the member lists, and its bytes are still postcard's.
        let mut next = value.clone();
        next.message_secrets.sender_data_secret = vec![9; 32];
        next.past_epoch_trees[1].message_secrets.sender_data_secret = vec![8; 32];
        let (second, notes2) = encode(&next, &first, &notes).unwrap();
        assert_eq!(&second[..], &postcard::to_allocvec(&next).unwrap()[..]);
        assert_eq!(notes2.len(), 4);

        // A new epoch: the oldest leaves, one comes in, with a context never seen.
        let later = store(1..5, 5);
        let (third, notes3) = encode(&later, &second, &notes2).unwrap();
        assert_eq!(&third[..], &postcard::to_allocvec(&later).unwrap()[..]);
        assert_eq!(
            notes3.iter().map(|(c, _)| c[2]).collect::<Vec<_>>(),
            vec![1, 2, 3, 4],
            "contexts [7, e], encoded with their length"
        );
    }

    /// Stand-in for openmls' reader ratchet: its window of keys for skipped messages,
    /// `None` where a message was read.
    #[derive(Serialize, Clone)]
    struct DecryptionRatchet {
        past_secrets: std::collections::VecDeque<Option<(Vec<u8>, [u8; 12])>>,
        ratchet_head: Vec<u8>,
    }

    #[test]
    fn a_window_of_used_keys_is_written_as_postcard_writes_it() {
        for n in [0usize, 1, 5, 127, 128, 511, 512, 513, 4096] {
            let mut window = DecryptionRatchet {
                past_secrets: std::iter::repeat_n(None, n).collect(),
                ratchet_head: vec![3; 32],
            };
            assert_eq!(shape::all_none(&window.past_secrets), Some(n));
            let (bytes, _) = encode(&window, &[], &Vec::new()).unwrap();
            assert_eq!(&bytes[..], &postcard::to_allocvec(&window).unwrap()[..], "{n} entries");
            // A key still waiting for its message: written entry by entry, as before.
            if n > 2 {
                window.past_secrets[n / 2] = Some((vec![9; 32], [8; 12]));
                assert_eq!(shape::all_none(&window.past_secrets), None);
                let (bytes, _) = encode(&window, &[], &Vec::new()).unwrap();
                assert_eq!(
                    &bytes[..],
                    &postcard::to_allocvec(&window).unwrap()[..],
                    "{n} entries, one kept"
                );
            }
        }
        // Only a sequence of `None`s counts.
        assert_eq!(shape::all_none(&Some(())), None);
        assert_eq!(shape::all_none(&vec![1u8, 2]), None);
        assert_eq!(shape::all_none(&Option::<u8>::None), None);
    }

    #[test]
    fn nothing_is_reused_without_a_context_or_a_note() {
        let mut value = store(0..2, 2);
        value.past_epoch_trees[0].message_secrets.serialized_context.clear();
        let (bytes, notes) = encode(&value, &[], &Vec::new()).unwrap();
        assert_eq!(&bytes[..], &postcard::to_allocvec(&value).unwrap()[..]);
        // Only the epoch with a context is noted.
        assert_eq!(notes.len(), 1);
        // A note that points past the old value is not used.
        let bad = vec![(notes[0].0.clone(), 0..bytes.len() + 1)];
        let (again, _) = encode(&value, &bytes, &bad).unwrap();
        assert_eq!(&again[..], &bytes[..]);
    }
}
