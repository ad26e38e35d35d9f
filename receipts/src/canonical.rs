//! RFC 8785 (JCS) bytes straight from a `Serialize` value, without first
//! building a `serde_json::Value` tree.
//!
//! Hand-written because it is on the enforcing path: every enforced request
//! encodes its action, counters and decision once. `serde_json::to_value`
//! then canonicalizing costs a B-tree per object and an allocation per
//! string and key; `serde_json_canonicalizer` allocates three buffers per
//! member. This serializer writes each object's members into the output as
//! they come, then puts them in order in place, reusing one scratch buffer:
//! one growing output and nothing per member.
//!
//! It covers what receipts hold in practice — strings, booleans, integers
//! within ±2^53, sequences, structs and maps whose keys are plain printable
//! ASCII — and refuses the rest (floats, larger integers, other keys) with
//! [`NotCovered`]; [`Writer::append`] then takes the general route, so the bytes
//! are the same either way.

use serde::ser::{self, Serialize};

/// Integers up to this magnitude print the same as the double RFC 8785
/// numbers are.
const EXACT: u64 = 1 << 53;

/// The general route: a `serde_json::Value`, then the canonicalizer crate.
fn general<T: Serialize + ?Sized>(value: &T) -> Result<Vec<u8>, serde_json::Error> {
    serde_json_canonicalizer::to_vec(&serde_json::to_value(value)?)
}

/// RFC 8785 form of a string.
pub(crate) fn canonical_str(text: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(text.len() + 2);
    write_canonical_str(text, &mut out);
    out
}

/// RFC 8785 escapes strings exactly as serde_json does (the two-letter
/// escapes, other control characters as lowercase `\u00xx`, everything else
/// literal), so text that needs escaping goes through serde_json's string
/// writer as is.
pub(crate) fn write_canonical_str(text: &str, out: &mut Vec<u8>) {
    if is_plain(text.as_bytes()) {
        // Nothing to escape (most text): copied as is between the quotes.
        out.reserve(text.len() + 2);
        out.push(b'"');
        out.extend_from_slice(text.as_bytes());
        out.push(b'"');
    } else {
        serde_json::to_writer(out, text).expect("writing a string to a Vec cannot fail");
    }
}

/// Whether text is written as is between quotes: no control character, no
/// quote, no backslash (the characters RFC 8785 escapes).
fn is_plain(text: &[u8]) -> bool {
    text.iter().all(|&b| b >= 0x20 && b != b'"' && b != b'\\')
}

/// The fast encoder's working space, kept between values so that encoding
/// several allocates it once.
pub(crate) struct Writer {
    /// Members of every object still open, innermost last.
    members: Vec<Member>,
    /// Where an object's members are copied while they are put in order.
    scratch: Vec<u8>,
}

impl Default for Writer {
    /// Room for a decision's objects (at most a dozen members, a few hundred
    /// bytes), so encoding one does not grow it.
    fn default() -> Self {
        Writer {
            members: Vec::with_capacity(16),
            scratch: Vec::with_capacity(512),
        }
    }
}

impl Writer {
    /// Appends the RFC 8785 form of `value` to `out`, by the fast encoder
    /// where it covers the value, otherwise by the general route.
    pub(crate) fn append<T: Serialize + ?Sized>(
        &mut self,
        value: &T,
        out: &mut Vec<u8>,
    ) -> Result<(), serde_json::Error> {
        let mark = out.len();
        if self.write(value, out).is_err() {
            out.truncate(mark);
            self.members.clear();
            out.extend_from_slice(&general(value)?);
        }
        Ok(())
    }

    /// Appends the RFC 8785 form of `value` to `out`, or fails with `out`
    /// in an unspecified state if the value holds something this encoder
    /// leaves to the general one.
    fn write<T: Serialize + ?Sized>(
        &mut self,
        value: &T,
        out: &mut Vec<u8>,
    ) -> Result<(), NotCovered> {
        value.serialize(&mut Encoder {
            out,
            members: &mut self.members,
            scratch: &mut self.scratch,
        })
    }
}

/// Why the fast encoder left a value to the general one.
#[derive(Debug)]
pub(crate) struct NotCovered(String);

impl std::fmt::Display for NotCovered {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for NotCovered {}

impl ser::Error for NotCovered {
    fn custom<M: std::fmt::Display>(msg: M) -> Self {
        NotCovered(msg.to_string())
    }
}

fn not_covered(what: &str) -> NotCovered {
    NotCovered(format!("{what} is left to the general canonicalizer"))
}

/// One member of an object being written: byte offsets into the output of
/// its quoted key and of the end of its value (which starts at `key_end`).
#[derive(Clone, Copy)]
struct Member {
    key_start: usize,
    key_end: usize,
    value_end: usize,
}

/// One value being encoded, with a [`Writer`]'s working space.
struct Encoder<'o> {
    out: &'o mut Vec<u8>,
    members: &'o mut Vec<Member>,
    scratch: &'o mut Vec<u8>,
}

impl<'o> Encoder<'o> {
    fn string(&mut self, text: &str) {
        write_canonical_str(text, self.out);
    }

    fn unsigned(&mut self, n: u64) -> Result<(), NotCovered> {
        if n > EXACT {
            return Err(not_covered("an integer beyond 2^53"));
        }
        self.out
            .extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
        Ok(())
    }

    fn signed(&mut self, n: i64) -> Result<(), NotCovered> {
        if n.unsigned_abs() > EXACT {
            return Err(not_covered("an integer beyond 2^53"));
        }
        self.out
            .extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
        Ok(())
    }

    fn open_object<'e>(&'e mut self) -> Object<'e, 'o> {
        Object {
            first_member: self.members.len(),
            start: self.out.len(),
            encoder: self,
        }
    }
}

/// An object (struct, map or newtype variant) being written: its members go
/// to the output unordered from `start`, and `end` orders them.
struct Object<'e, 'o> {
    encoder: &'e mut Encoder<'o>,
    /// Index of this object's first entry in `encoder.members`.
    first_member: usize,
    /// Offset in the output where the object begins.
    start: usize,
}

impl Object<'_, '_> {
    /// Writes a struct's member: its key is text already.
    fn member<T: Serialize + ?Sized>(&mut self, key: &str, value: &T) -> Result<(), NotCovered> {
        if !key.is_ascii() || !is_plain(key.as_bytes()) {
            return Err(not_covered("an object key that is not plain ASCII text"));
        }
        let key_start = self.encoder.out.len();
        write_canonical_str(key, self.encoder.out);
        self.started(key_start);
        self.value(value)
    }

    fn key<T: Serialize + ?Sized>(&mut self, key: &T) -> Result<(), NotCovered> {
        let key_start = self.encoder.out.len();
        key.serialize(&mut *self.encoder)?;
        let written = &self.encoder.out[key_start..];
        // Printable ASCII without quote or backslash: its bytes in the quotes
        // are the key itself, and byte order is RFC 8785's UTF-16 order.
        let plain = written.len() >= 2
            && written[0] == b'"'
            && written[written.len() - 1] == b'"'
            && written.is_ascii()
            && is_plain(&written[1..written.len() - 1]);
        if !plain {
            return Err(not_covered("an object key that is not plain ASCII text"));
        }
        self.started(key_start);
        Ok(())
    }

    /// Notes a member whose quoted key was written from `key_start`.
    fn started(&mut self, key_start: usize) {
        let key_end = self.encoder.out.len();
        self.encoder.members.push(Member {
            key_start,
            key_end,
            value_end: key_end,
        });
    }

    fn value<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), NotCovered> {
        value.serialize(&mut *self.encoder)?;
        let end = self.encoder.out.len();
        let member = self
            .encoder
            .members
            .last_mut()
            .expect("a value follows its key");
        member.value_end = end;
        Ok(())
    }

    /// Rewrites the members written since `start` as `{"k":v,...}` in key
    /// order.
    fn end(self) -> Result<(), NotCovered> {
        let encoder = self.encoder;
        let members = &mut encoder.members[self.first_member..];
        let out = &mut *encoder.out;
        // The key's text, between its quotes: with the quotes, a key that
        // is a prefix of another would sort after it whenever the longer
        // one goes on with a byte below `"` (space or `!`).
        let key = |m: &Member| m.key_start + 1..m.key_end - 1;
        members.sort_unstable_by(|a, b| out[key(a)].cmp(&out[key(b)]));
        if members
            .windows(2)
            .any(|w| out[key(&w[0])] == out[key(&w[1])])
        {
            return Err(not_covered("an object that repeats a key"));
        }
        encoder.scratch.clear();
        encoder.scratch.extend_from_slice(&out[self.start..]);
        out.truncate(self.start);
        out.push(b'{');
        let base = self.start;
        for (i, m) in members.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            out.extend_from_slice(&encoder.scratch[m.key_start - base..m.key_end - base]);
            out.push(b':');
            out.extend_from_slice(&encoder.scratch[m.key_end - base..m.value_end - base]);
        }
        out.push(b'}');
        encoder.members.truncate(self.first_member);
        Ok(())
    }
}

/// A sequence being written: `[` is out, `,` goes before all but the first.
struct Sequence<'e, 'o> {
    encoder: &'e mut Encoder<'o>,
    first: bool,
}

impl Sequence<'_, '_> {
    fn element<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), NotCovered> {
        if !std::mem::take(&mut self.first) {
            self.encoder.out.push(b',');
        }
        value.serialize(&mut *self.encoder)
    }

    fn end(self) -> Result<(), NotCovered> {
        self.encoder.out.push(b']');
        Ok(())
    }
}

impl<'e, 'o> ser::Serializer for &'e mut Encoder<'o> {
    type Ok = ();
    type Error = NotCovered;
    type SerializeSeq = Sequence<'e, 'o>;
    type SerializeTuple = Sequence<'e, 'o>;
    type SerializeTupleStruct = Sequence<'e, 'o>;
    type SerializeTupleVariant = ser::Impossible<(), NotCovered>;
    type SerializeMap = Object<'e, 'o>;
    type SerializeStruct = Object<'e, 'o>;
    type SerializeStructVariant = ser::Impossible<(), NotCovered>;

    fn serialize_bool(self, v: bool) -> Result<(), NotCovered> {
        self.out
            .extend_from_slice(if v { b"true" } else { b"false" });
        Ok(())
    }
    fn serialize_i8(self, v: i8) -> Result<(), NotCovered> {
        self.signed(v.into())
    }
    fn serialize_i16(self, v: i16) -> Result<(), NotCovered> {
        self.signed(v.into())
    }
    fn serialize_i32(self, v: i32) -> Result<(), NotCovered> {
        self.signed(v.into())
    }
    fn serialize_i64(self, v: i64) -> Result<(), NotCovered> {
        self.signed(v)
    }
    fn serialize_u8(self, v: u8) -> Result<(), NotCovered> {
        self.unsigned(v.into())
    }
    fn serialize_u16(self, v: u16) -> Result<(), NotCovered> {
        self.unsigned(v.into())
    }
    fn serialize_u32(self, v: u32) -> Result<(), NotCovered> {
        self.unsigned(v.into())
    }
    fn serialize_u64(self, v: u64) -> Result<(), NotCovered> {
        self.unsigned(v)
    }
    fn serialize_f32(self, _: f32) -> Result<(), NotCovered> {
        Err(not_covered("a float"))
    }
    fn serialize_f64(self, _: f64) -> Result<(), NotCovered> {
        Err(not_covered("a float"))
    }
    fn serialize_char(self, v: char) -> Result<(), NotCovered> {
        self.string(v.encode_utf8(&mut [0; 4]));
        Ok(())
    }
    fn serialize_str(self, v: &str) -> Result<(), NotCovered> {
        self.string(v);
        Ok(())
    }
    fn serialize_bytes(self, v: &[u8]) -> Result<(), NotCovered> {
        // serde_json writes bytes as an array of numbers.
        let mut seq = ser::Serializer::serialize_seq(self, Some(v.len()))?;
        for b in v {
            seq.element(b)?;
        }
        seq.end()
    }
    fn serialize_none(self) -> Result<(), NotCovered> {
        self.serialize_unit()
    }
    fn serialize_some<T: Serialize + ?Sized>(self, value: &T) -> Result<(), NotCovered> {
        value.serialize(self)
    }
    fn serialize_unit(self) -> Result<(), NotCovered> {
        self.out.extend_from_slice(b"null");
        Ok(())
    }
    fn serialize_unit_struct(self, _: &'static str) -> Result<(), NotCovered> {
        self.serialize_unit()
    }
    fn serialize_unit_variant(
        self,
        _: &'static str,
        _: u32,
        variant: &'static str,
    ) -> Result<(), NotCovered> {
        self.string(variant);
        Ok(())
    }
    fn serialize_newtype_struct<T: Serialize + ?Sized>(
        self,
        _: &'static str,
        value: &T,
    ) -> Result<(), NotCovered> {
        value.serialize(self)
    }
    fn serialize_newtype_variant<T: Serialize + ?Sized>(
        self,
        _: &'static str,
        _: u32,
        variant: &'static str,
        value: &T,
    ) -> Result<(), NotCovered> {
        // serde_json's form: {"variant": value}.
        let mut object = self.open_object();
        object.member(variant, value)?;
        object.end()
    }
    fn serialize_seq(self, _: Option<usize>) -> Result<Sequence<'e, 'o>, NotCovered> {
        self.out.push(b'[');
        Ok(Sequence {
            encoder: self,
            first: true,
        })
    }
    fn serialize_tuple(self, len: usize) -> Result<Sequence<'e, 'o>, NotCovered> {
        self.serialize_seq(Some(len))
    }
    fn serialize_tuple_struct(
        self,
        _: &'static str,
        len: usize,
    ) -> Result<Sequence<'e, 'o>, NotCovered> {
        self.serialize_seq(Some(len))
    }
    fn serialize_tuple_variant(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        _: usize,
    ) -> Result<Self::SerializeTupleVariant, NotCovered> {
        Err(not_covered("a tuple variant"))
    }
    fn serialize_map(self, _: Option<usize>) -> Result<Object<'e, 'o>, NotCovered> {
        Ok(self.open_object())
    }
    fn serialize_struct(self, _: &'static str, _: usize) -> Result<Object<'e, 'o>, NotCovered> {
        Ok(self.open_object())
    }
    fn serialize_struct_variant(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        _: usize,
    ) -> Result<Self::SerializeStructVariant, NotCovered> {
        Err(not_covered("a struct variant"))
    }
}

/// serde's three sequence traits differ only in names: one body for all.
macro_rules! sequence {
    ($trait:ident, $method:ident) => {
        impl ser::$trait for Sequence<'_, '_> {
            type Ok = ();
            type Error = NotCovered;
            fn $method<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), NotCovered> {
                self.element(value)
            }
            fn end(self) -> Result<(), NotCovered> {
                Sequence::end(self)
            }
        }
    };
}

sequence!(SerializeSeq, serialize_element);
sequence!(SerializeTuple, serialize_element);
sequence!(SerializeTupleStruct, serialize_field);

impl ser::SerializeMap for Object<'_, '_> {
    type Ok = ();
    type Error = NotCovered;
    fn serialize_key<T: Serialize + ?Sized>(&mut self, key: &T) -> Result<(), NotCovered> {
        self.key(key)
    }
    fn serialize_value<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), NotCovered> {
        self.value(value)
    }
    fn end(self) -> Result<(), NotCovered> {
        Object::end(self)
    }
}

impl ser::SerializeStruct for Object<'_, '_> {
    type Ok = ();
    type Error = NotCovered;
    fn serialize_field<T: Serialize + ?Sized>(
        &mut self,
        key: &'static str,
        value: &T,
    ) -> Result<(), NotCovered> {
        self.member(key, value)
    }
    fn end(self) -> Result<(), NotCovered> {
        Object::end(self)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use proptest::prelude::*;
    use serde::Serialize;
    use serde_json::{json, Value};

    use super::*;

    /// What the general route makes of `value`: the bytes this encoder must
    /// reproduce.
    fn reference<T: Serialize>(value: &T) -> Vec<u8> {
        serde_json_canonicalizer::to_vec(&serde_json::to_value(value).expect("value"))
            .expect("canonical")
    }

    /// What [`Writer::append`] writes, by whichever route.
    fn appended<T: Serialize>(value: &T) -> Vec<u8> {
        let mut out = Vec::new();
        Writer::default().append(value, &mut out).expect("encode");
        out
    }

    fn fast<T: Serialize>(value: &T) -> Option<Vec<u8>> {
        let mut out = Vec::new();
        Writer::default().write(value, &mut out).ok().map(|()| out)
    }

    #[derive(Serialize)]
    #[serde(rename_all = "snake_case")]
    enum Kind {
        Web,
        Payment,
    }

    #[derive(Serialize)]
    struct Inner {
        zeta: u64,
        #[serde(rename = "type")]
        kind: Kind,
        alpha: Option<String>,
        #[serde(skip_serializing_if = "Vec::is_empty")]
        list: Vec<String>,
    }

    #[derive(Serialize)]
    struct Outer<'a> {
        text: &'a str,
        #[serde(flatten)]
        inner: &'a Inner,
        stage: Kind,
        nested: Inner,
        number: i64,
        flag: bool,
        unit: (),
        pair: (u8, char),
    }

    #[test]
    fn structs_flattened_structs_and_renamed_members_come_out_in_key_order() {
        let inner = Inner {
            zeta: 3,
            kind: Kind::Payment,
            alpha: None,
            list: vec!["b\"\\\u{1}é😀".into(), String::new()],
        };
        let outer = Outer {
            text: "line\nbreak \u{7f} \u{2028}",
            inner: &inner,
            stage: Kind::Web,
            nested: Inner {
                zeta: EXACT,
                kind: Kind::Web,
                alpha: Some("a".into()),
                list: vec![],
            },
            number: -(EXACT as i64),
            flag: false,
            unit: (),
            pair: (7, 'é'),
        };
        let bytes = fast(&outer).expect("covered");
        assert_eq!(
            String::from_utf8(bytes.clone()).expect("utf-8"),
            String::from_utf8(reference(&outer)).expect("utf-8")
        );
        assert!(bytes.starts_with(b"{\"alpha\":null,\"flag\":false,"));
    }

    #[test]
    fn what_it_does_not_cover_it_refuses_and_append_still_matches() {
        let cases: Vec<Value> = vec![
            json!({"a": 1.5}),
            json!([EXACT + 1]),
            json!({"é": 1, "e": 2}),
            json!({"a\"b": 1, "a": 2}),
            json!({"\u{1}": 1}),
        ];
        for case in &cases {
            assert!(fast(case).is_none(), "{case}");
            assert_eq!(appended(case), reference(case), "{case}");
        }
        let big: i64 = -(EXACT as i64) - 1;
        assert!(fast(&big).is_none());
        assert_eq!(appended(&big), reference(&big));
    }

    #[test]
    fn a_writer_reused_after_a_value_it_left_to_the_general_route_writes_right() {
        let mut writer = Writer::default();
        let mut out = Vec::new();
        // Fails deep inside an open object, leaving its members behind.
        let float = json!({"a": {"b": [1, {"c": 0.5}]}, "d": 1});
        writer.append(&float, &mut out).expect("encode");
        out.push(b' ');
        let plain = json!({"y": {"x": 1}, "w": 2});
        writer.append(&plain, &mut out).expect("encode");
        let expected = [reference(&float), b" ".to_vec(), reference(&plain)].concat();
        assert_eq!(out, expected);
    }

    #[test]
    fn a_key_sorts_before_the_keys_it_is_a_prefix_of() {
        // Space and `!` sort below the closing quote: compared with their
        // quotes, "ab" would come after "ab!".
        let value = json!({"ab!": 1, "ab": 2, "ab ": 3, "a": 4, "b": 5});
        let bytes = fast(&value).expect("covered");
        assert_eq!(bytes, br#"{"a":4,"ab":2,"ab ":3,"ab!":1,"b":5}"#);
        assert_eq!(bytes, reference(&value));
    }

    #[test]
    fn a_map_that_repeats_a_key_is_refused() {
        struct Twice;
        impl Serialize for Twice {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                use serde::ser::SerializeMap;
                let mut map = s.serialize_map(None)?;
                map.serialize_entry("k", &1)?;
                map.serialize_entry("k", &2)?;
                map.end()
            }
        }
        assert!(fast(&Twice).is_none());
    }

    #[test]
    fn newtype_variants_and_bytes_take_serde_json_forms() {
        #[derive(Serialize)]
        enum Wrapped {
            Amount(u64),
        }
        #[derive(Serialize)]
        struct Holder {
            wrapped: Wrapped,
            #[serde(with = "serde_bytes_as_slice")]
            raw: Vec<u8>,
        }
        mod serde_bytes_as_slice {
            pub fn serialize<S: serde::Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
                s.serialize_bytes(v)
            }
        }
        let holder = Holder {
            wrapped: Wrapped::Amount(5),
            raw: vec![0, 255],
        };
        let bytes = fast(&holder).expect("covered");
        assert_eq!(bytes, reference(&holder));
        assert_eq!(bytes, br#"{"raw":[0,255],"wrapped":{"Amount":5}}"#);
    }

    /// Arbitrary JSON values: strings and keys in ASCII with controls,
    /// quotes and backslashes, keys that are prefixes of others, characters
    /// whose UTF-8 and UTF-16 orders differ; integers on both sides of
    /// 2^53; floats.
    pub(crate) fn any_json() -> impl Strategy<Value = Value> {
        let text = prop_oneof![
            "[a-z_]{0,6}",
            // Few letters, so keys are often prefixes of one another, with
            // bytes that sort below the quote.
            "[a !]{0,3}",
            "[\\x00-\\x7f]{0,8}",
            "[a\"\\\\\u{1}\u{1f}\u{7f}é\u{ff61}\u{1f600}\u{2028}]{0,6}",
        ];
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(Value::from),
            any::<u64>().prop_map(Value::from),
            (-(1i64 << 54)..(1i64 << 54)).prop_map(Value::from),
            any::<f64>()
                .prop_filter("JSON has no NaN or infinity", |f| f.is_finite())
                .prop_map(Value::from),
            text.clone().prop_map(Value::String),
        ];
        leaf.prop_recursive(4, 48, 6, move |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
                proptest::collection::btree_map(text.clone(), inner, 0..6)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    proptest! {
        /// Objects whose keys are prefixes of one another (and of keys
        /// going on with bytes below the quote) come out in RFC 8785 order.
        #[test]
        fn keys_that_share_prefixes_are_ordered_as_the_canonicalizer_orders_them(
            keys in prop::collection::btree_set("[a !]{0,3}", 0..8),
        ) {
            let value = Value::Object(keys.into_iter().map(|k| (k, json!(1))).collect());
            prop_assert_eq!(fast(&value).expect("covered"), reference(&value));
        }

        /// Either route writes exactly what the general canonicalizer
        /// writes, and the fast encoder declines rather than differ.
        #[test]
        fn any_value_comes_out_as_the_general_canonicalizer_writes_it(value in any_json()) {
            let expected = serde_json_canonicalizer::to_vec(&value).expect("canonical");
            prop_assert_eq!(&appended(&value), &expected);
            if let Some(bytes) = fast(&value) {
                prop_assert_eq!(bytes, expected);
            }
        }
    }

    #[test]
    fn typical_decision_values_take_the_fast_route() {
        let typical = json!({"type": "payment", "host": "pay.example",
            "amount_cents": 48700, "fields": {"a": [1, -2, true, null, "x\u{1}"]}});
        assert_eq!(fast(&typical).expect("covered"), reference(&typical));
    }
}
