//! Writing a group's message secrets without encoding again what cannot have
//! changed: the member lists of its past epochs, and the past epochs whole
//! when the operation that writes cannot have touched them.
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
//!
//! # Past epochs whole
//!
//! A past epoch's secrets do change: reading a message of that epoch moves its
//! sender's ratchet. But in openmls 0.9.2 only that does (and the merge of a
//! commit, which adds an epoch): making an application message touches the
//! current epoch's secret tree alone, and reading a message picks the tree of
//! the epoch in its header (`MlsGroup::message_secrets_for_epoch_mut`), the
//! current one's when that epoch is current. For those two operations the
//! caller says so ([`Store::past_epochs_unchanged`](super::Store::past_epochs_unchanged)),
//! and only for a group whose state in memory is the one the store holds (same
//! store version): [`encode`] is then told `past_unchanged` and copies the
//! bytes of the `past_epoch_trees` field from the stored value, noted where
//! the last write put them. The stored bytes are again postcard's, as debug
//! builds check on every such write; a value without the note (the first write
//! after a restart) is encoded as before.

use std::ops::Range;

use postcard::ser_flavors::Flavor as _;
use serde::ser::{self, Serialize};

use super::{shape, StoreError, Value, ZeroizingVec};

pub(super) type Postcard = postcard::Serializer<ZeroizingVec>;

/// Where parts of a stored value lie, for the next write of it to copy.
#[derive(Clone, Debug, Default)]
pub(super) struct Notes {
    /// Each past epoch's member list: the encoding of the epoch's group context, and
    /// the bytes of its member list.
    pub(super) lists: Vec<(Vec<u8>, Range<usize>)>,
    /// The bytes of the past epochs, all of them (the `past_epoch_trees` field).
    pub(super) past: Option<Range<usize>>,
}

/// Encodes `value` as postcard does, copying from `old` (the value stored
/// before, whose parts lie at `old_notes`) each member list whose context is
/// noted there, and, if `past_unchanged` (the caller knows that the past epochs
/// are those of `old`), the past epochs whole. Returns the bytes and their notes.
pub(super) fn encode(
    value: &(impl Serialize + ?Sized),
    old: &[u8],
    old_notes: &Notes,
    past_unchanged: bool,
) -> Result<(Value, Notes), StoreError> {
    let mut out = Postcard {
        output: ZeroizingVec::with_capacity(old.len()),
    };
    let mut state = State {
        old,
        old_notes,
        past_unchanged,
        notes: Notes::default(),
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

#[cfg(test)]
thread_local! {
    /// How many times this thread's writes copied the past epochs whole, for tests to
    /// tell a copy from an encoding (the bytes are the same).
    pub(super) static PAST_COPIES: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

struct State<'a> {
    old: &'a [u8],
    old_notes: &'a Notes,
    past_unchanged: bool,
    notes: Notes,
    /// The encoding of the group context last seen inside the current
    /// `EpochTree`.
    context: Option<Vec<u8>>,
}

impl State<'_> {
    /// The bytes of the member list whose context is `context`, if noted.
    fn noted(&self, context: &[u8]) -> Option<&[u8]> {
        self.old_notes
            .lists
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

    /// Writes the past epochs `value` as the old value's bytes, if the caller said they
    /// are unchanged and the old value's are noted; carries the notes of the member
    /// lists inside them over to their new place. Whether it wrote.
    fn copy_past<T: Serialize + ?Sized>(&mut self, value: &T) -> postcard::Result<bool> {
        let state = &mut *self.state;
        let Some(range) = state.old_notes.past.clone().filter(|_| state.past_unchanged) else {
            return Ok(false);
        };
        let Some(old) = state.old.get(range.clone()) else {
            return Ok(false);
        };
        #[cfg(debug_assertions)]
        {
            let again = postcard::to_allocvec(value)?;
            debug_assert!(
                again == old,
                "past epochs said to be unchanged differ from their encoding"
            );
        }
        #[cfg(not(debug_assertions))]
        let _ = value;
        let start = self.out.output.0.len();
        self.out.output.try_extend(old)?;
        #[cfg(test)]
        PAST_COPIES.set(PAST_COPIES.get() + 1);
        for (context, list) in &state.old_notes.lists {
            if range.start <= list.start && list.end <= range.end {
                let at = start + (list.start - range.start)..start + (list.end - range.start);
                state.notes.lists.push((context.clone(), at));
            }
        }
        Ok(true)
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
                self.state.notes.lists.push((context, start..end));
                Ok(())
            }
            ("MessageSecretsStore", "past_epoch_trees") => {
                let start = self.position();
                if !self.copy_past(value)? {
                    value.serialize(self.tap())?;
                }
                let end = self.position();
                self.state.notes.past = Some(start..end);
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
        let (first, notes) = encode(&value, &[], &Notes::default(), false).unwrap();
        assert_eq!(&first[..], &postcard::to_allocvec(&value).unwrap()[..]);
        assert_eq!(notes.lists.len(), 4);
        for (i, (context, range)) in notes.lists.iter().enumerate() {
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
        let (second, notes2) = encode(&next, &first, &notes, false).unwrap();
        assert_eq!(&second[..], &postcard::to_allocvec(&next).unwrap()[..]);
        assert_eq!(notes2.lists.len(), 4);

        // A new epoch: the oldest leaves, one comes in, with a context never seen.
        let later = store(1..5, 5);
        let (third, notes3) = encode(&later, &second, &notes2, false).unwrap();
        assert_eq!(&third[..], &postcard::to_allocvec(&later).unwrap()[..]);
        assert_eq!(
            notes3.lists.iter().map(|(c, _)| c[2]).collect::<Vec<_>>(),
            vec![1, 2, 3, 4],
            "contexts [7, e], encoded with their length"
        );
    }

    #[test]
    fn unchanged_past_epochs_are_copied_whole() {
        let value = store(0..4, 4);
        let (first, notes) = encode(&value, &[], &Notes::default(), false).unwrap();
        let past = notes.past.clone().unwrap();
        assert_eq!(
            &first[past.clone()],
            &postcard::to_allocvec(&value.past_epoch_trees).unwrap()[..]
        );

        // Only the current epoch changed: the past epochs' bytes come from the old value.
        let mut next = value.clone();
        next.message_secrets.sender_data_secret = vec![9; 32];
        next.extra.insert("longer".to_string(), (1, 2.0, 'x', false));
        let copies = PAST_COPIES.get();
        let (second, notes2) = encode(&next, &first, &notes, true).unwrap();
        assert_eq!(PAST_COPIES.get(), copies + 1, "copied, not encoded");
        assert_eq!(&second[..], &postcard::to_allocvec(&next).unwrap()[..]);
        assert_eq!(notes2.past, notes.past);
        // The member lists' notes are carried over and still point at the lists.
        assert_eq!(notes2.lists.len(), 4);
        for (i, (_, range)) in notes2.lists.iter().enumerate() {
            assert_eq!(
                &second[range.clone()],
                &postcard::to_allocvec(&leaves(i as u8)).unwrap()[..]
            );
        }
        // Without the caller's word, a changed past epoch is encoded again.
        let mut moved = next.clone();
        moved.past_epoch_trees[2].message_secrets.sender_data_secret = vec![1; 32];
        let (third, notes3) = encode(&moved, &second, &notes2, false).unwrap();
        assert_eq!(PAST_COPIES.get(), copies + 1);
        assert_eq!(&third[..], &postcard::to_allocvec(&moved).unwrap()[..]);
        assert_eq!(notes3.lists.len(), 4);
        // Without a note of where the old past epochs lie, nothing is copied.
        let (fourth, _) = encode(&moved, &third, &Notes::default(), true).unwrap();
        assert_eq!(&fourth[..], &third[..]);
        assert_eq!(PAST_COPIES.get(), copies + 1);
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
            let (bytes, _) = encode(&window, &[], &Notes::default(), false).unwrap();
            assert_eq!(&bytes[..], &postcard::to_allocvec(&window).unwrap()[..], "{n} entries");
            // A key still waiting for its message: written entry by entry, as before.
            if n > 2 {
                window.past_secrets[n / 2] = Some((vec![9; 32], [8; 12]));
                assert_eq!(shape::all_none(&window.past_secrets), None);
                let (bytes, _) = encode(&window, &[], &Notes::default(), false).unwrap();
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
        let (bytes, notes) = encode(&value, &[], &Notes::default(), false).unwrap();
        assert_eq!(&bytes[..], &postcard::to_allocvec(&value).unwrap()[..]);
        // Only the epoch with a context is noted.
        assert_eq!(notes.lists.len(), 1);
        // A note that points past the old value is not used.
        let bad = Notes {
            lists: vec![(notes.lists[0].0.clone(), 0..bytes.len() + 1)],
            past: Some(0..bytes.len() + 1),
        };
        let (again, _) = encode(&value, &bytes, &bad, true).unwrap();
        assert_eq!(&again[..], &bytes[..]);
    }
}
