//! The HPACK decoder `H2Watch` keeps in step with h2's: field
//! representations, integers and string literals parsed here over borrowed
//! bytes; the static and dynamic tables come from `httlib-hpack` and Huffman
//! strings are decoded by `httlib-huffman`.
//!
//! Why not a whole decoder crate: loona-hpack rebuilds its Huffman table
//! (hash maps of 257 codes) for every Huffman string, ~30 µs each here, on
//! the path of every HTTP/2 request; httlib-hpack's decoder indexes an empty
//! slice on a block cut after a literal's first byte (a panic a sandbox
//! could trigger) and moves the rest of the block after every field.

use httlib_hpack::table::Table;
use httlib_huffman::DecoderSpeed;

/// Why a header block could not be decoded (h2 answers these with
/// COMPRESSION_ERROR).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum HpackError {
    /// The block ends inside a field.
    Truncated,
    /// An index of 0 or past the end of the tables.
    BadIndex,
    /// An integer longer than this decoder accepts.
    IntegerOverflow,
    /// Huffman data that is not a canonical encoding (bad padding, EOS).
    BadHuffman,
    /// A dynamic table size update above the size the peer may use.
    TableSizeTooLarge,
}

/// One connection's HPACK decoding state.
pub(crate) struct HpackDecoder {
    table: Table<'static>,
    /// SETTINGS_HEADER_TABLE_SIZE: the most a size update may ask for.
    max_table: usize,
    name: Vec<u8>,
    value: Vec<u8>,
    reencoded: Vec<u8>,
}

impl HpackDecoder {
    pub(crate) fn new(max_table: usize) -> Self {
        HpackDecoder {
            table: Table::with_dynamic_size(u32::try_from(max_table).unwrap_or(u32::MAX)),
            max_table,
            name: Vec::new(),
            value: Vec::new(),
            reencoded: Vec::new(),
        }
    }

    /// Applies a dynamic table size update.
    pub(crate) fn set_table_size(&mut self, size: usize) -> Result<(), HpackError> {
        if size > self.max_table {
            return Err(HpackError::TableSizeTooLarge);
        }
        self.table
            .update_max_dynamic_size(u32::try_from(size).unwrap_or(u32::MAX));
        Ok(())
    }

    /// Decodes one complete header block, calling `field` with each name and
    /// value in order. On an error the tables may hold part of the block: the
    /// connection is unusable afterwards (as for h2).
    pub(crate) fn decode(
        &mut self,
        block: &[u8],
        mut field: impl FnMut(&[u8], &[u8]),
    ) -> Result<(), HpackError> {
        let mut rest = block;
        while let Some(&first) = rest.first() {
            if first & 0x80 != 0 {
                let (index, used) = integer(rest, 7)?;
                rest = &rest[used..];
                let (name, value) = entry(&self.table, index)?;
                field(name, value);
            } else if first & 0xe0 == 0x20 {
                let (size, used) = integer(rest, 5)?;
                rest = &rest[used..];
                self.set_table_size(size)?;
            } else {
                // Literal: with incremental indexing (01), else without
                // indexing (0000) or never indexed (0001).
                let indexing = first & 0xc0 == 0x40;
                let (index, used) = integer(rest, if indexing { 6 } else { 4 })?;
                rest = &rest[used..];
                if index == 0 {
                    let (raw, huffman, used) = string(rest)?;
                    rest = &rest[used..];
                    self.name.clear();
                    if huffman {
                        huffman_decode(raw, &mut self.name, &mut self.reencoded)?;
                    } else {
                        self.name.extend_from_slice(raw);
                    }
                } else {
                    let (name, _) = entry(&self.table, index)?;
                    self.name.clear();
                    self.name.extend_from_slice(name);
                }
                let (raw, huffman, used) = string(rest)?;
                rest = &rest[used..];
                self.value.clear();
                if huffman {
                    huffman_decode(raw, &mut self.value, &mut self.reencoded)?;
                } else {
                    self.value.extend_from_slice(raw);
                }
                field(&self.name, &self.value);
                if indexing {
                    self.table.insert(self.name.clone(), self.value.clone());
                }
            }
        }
        Ok(())
    }
}

/// Entry `index` of the static + dynamic tables (1-based).
fn entry<'t>(table: &'t Table<'static>, index: usize) -> Result<(&'t [u8], &'t [u8]), HpackError> {
    let index = u32::try_from(index).map_err(|_| HpackError::BadIndex)?;
    table.get(index).ok_or(HpackError::BadIndex)
}

/// An HPACK integer with an `n`-bit prefix (RFC 7541 §5.1): (value, bytes
/// used). At most four continuation bytes, as h2 allows.
fn integer(buf: &[u8], prefix: u8) -> Result<(usize, usize), HpackError> {
    let mask = (1u8 << prefix) - 1;
    let first = buf.first().ok_or(HpackError::Truncated)? & mask;
    if first < mask {
        return Ok((usize::from(first), 1));
    }
    let mut value = usize::from(mask);
    for i in 1..=4 {
        let b = *buf.get(i).ok_or(HpackError::Truncated)?;
        value += usize::from(b & 0x7f) << (7 * (i - 1));
        if b & 0x80 == 0 {
            return Ok((value, i + 1));
        }
    }
    Err(HpackError::IntegerOverflow)
}

/// A string literal: (its bytes as sent, Huffman-coded?, bytes used).
fn string(buf: &[u8]) -> Result<(&[u8], bool, usize), HpackError> {
    let huffman = buf.first().ok_or(HpackError::Truncated)? & 0x80 != 0;
    let (len, used) = integer(buf, 7)?;
    let end = used.checked_add(len).ok_or(HpackError::Truncated)?;
    let raw = buf.get(used..end).ok_or(HpackError::Truncated)?;
    Ok((raw, huffman, end))
}

/// Decodes Huffman data and insists it is the canonical encoding: the
/// decoder alone accepts padding bits that are not all ones, which h2
/// rejects, so the decoded text must encode back to exactly `raw`.
fn huffman_decode(raw: &[u8], out: &mut Vec<u8>, scratch: &mut Vec<u8>) -> Result<(), HpackError> {
    httlib_huffman::decode(raw, out, DecoderSpeed::FiveBits).map_err(|_| HpackError::BadHuffman)?;
    scratch.clear();
    httlib_huffman::encode(out, scratch).map_err(|_| HpackError::BadHuffman)?;
    if scratch.as_slice() != raw {
        return Err(HpackError::BadHuffman);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    type Fields = Vec<(Vec<u8>, Vec<u8>)>;

    fn ours(d: &mut HpackDecoder, block: &[u8]) -> Result<Fields, HpackError> {
        let mut out = Vec::new();
        d.decode(block, |n, v| out.push((n.to_vec(), v.to_vec())))?;
        Ok(out)
    }

    fn oracle(d: &mut loona_hpack::Decoder<'static>, block: &[u8]) -> Option<Fields> {
        let mut out = Vec::new();
        d.decode_with_cb(block, |n, v| out.push((n.into_owned(), v.into_owned())))
            .ok()?;
        Some(out)
    }

    /// Encodes with httlib-hpack's encoder, every representation and
    /// Huffman choice the flags allow.
    fn encode(
        enc: &mut httlib_hpack::Encoder<'static>,
        fields: &[(Vec<u8>, Vec<u8>, u8)],
    ) -> Vec<u8> {
        let mut dst = Vec::new();
        for (n, v, flags) in fields {
            enc.encode((n.clone(), v.clone(), *flags), &mut dst)
                .expect("encodable");
        }
        dst
    }

    fn any_field() -> impl Strategy<Value = (Vec<u8>, Vec<u8>, u8)> {
        let name = prop_oneof![
            Just(b":method".to_vec()),
            Just(b":path".to_vec()),
            Just(b"user-agent".to_vec()),
            Just(b"authorization".to_vec()),
            "[a-z-]{1,12}".prop_map(String::into_bytes),
        ];
        let value = prop_oneof![
            Just(b"GET".to_vec()),
            "[ -~]{0,40}".prop_map(String::into_bytes),
            proptest::collection::vec(any::<u8>(), 0..20),
        ];
        // Flags: Huffman name/value, indexing, never-indexed, best format.
        (name, value, 0u8..32)
    }

    proptest! {
        /// Several blocks on one connection (the dynamic table carries
        /// over): the same fields as loona-hpack's decoder, in order.
        #[test]
        fn agrees_with_loona_hpack(blocks in proptest::collection::vec(
            proptest::collection::vec(any_field(), 0..10), 1..5)) {
            let mut enc = httlib_hpack::Encoder::default();
            let mut ours_d = HpackDecoder::new(4096);
            let mut theirs = loona_hpack::Decoder::new();
            for fields in &blocks {
                let block = encode(&mut enc, fields);
                let expected = oracle(&mut theirs, &block).expect("oracle decodes");
                prop_assert_eq!(ours(&mut ours_d, &block).expect("decodes"), expected);
            }
        }

        /// Cut anywhere, a block is an error or a shorter list; never a panic.
        #[test]
        fn truncated_and_random_blocks_never_panic(
            fields in proptest::collection::vec(any_field(), 1..8),
            cut in any::<prop::sample::Index>(),
            noise in proptest::collection::vec(any::<u8>(), 0..64),
        ) {
            let mut enc = httlib_hpack::Encoder::default();
            let block = encode(&mut enc, &fields);
            let cut = cut.index(block.len() + 1);
            let _ = ours(&mut HpackDecoder::new(4096), &block[..cut]);
            let _ = ours(&mut HpackDecoder::new(4096), &noise);
        }
    }

    #[test]
    fn huffman_strings_must_be_canonical() {
        let mut raw = Vec::new();
        httlib_huffman::encode(b"www.example.com", &mut raw).expect("encode");
        let literal = |value: &[u8]| {
            // Literal without indexing, indexed name 1 (:authority), Huffman value.
            let mut b = vec![0x01, 0x80 | u8::try_from(value.len()).expect("short")];
            b.extend_from_slice(value);
            b
        };
        let mut d = HpackDecoder::new(4096);
        let fields = ours(&mut d, &literal(&raw)).expect("canonical");
        assert_eq!(
            fields,
            [(b":authority".to_vec(), b"www.example.com".to_vec())]
        );
        // Padding bits that are not all ones: "a" is 00011, so 0x1f is "a"
        // with three bits of padding and 0x18 the same with zero bits.
        assert_eq!(
            ours(&mut d, &literal(&[0x1f])).expect("canonical"),
            [(b":authority".to_vec(), b"a".to_vec())]
        );
        assert_eq!(ours(&mut d, &literal(&[0x18])), Err(HpackError::BadHuffman));
        // Padding longer than seven bits.
        let mut long_pad = raw;
        long_pad.push(0xff);
        assert_eq!(
            ours(&mut d, &literal(&long_pad)),
            Err(HpackError::BadHuffman)
        );
    }

    #[test]
    fn indexes_tables_and_size_updates_are_checked() {
        let mut d = HpackDecoder::new(4096);
        assert_eq!(ours(&mut d, &[0x80]), Err(HpackError::BadIndex));
        assert_eq!(ours(&mut d, &[0x80 | 62]), Err(HpackError::BadIndex));
        assert_eq!(
            ours(&mut d, &[0x82]).expect("static"),
            [(b":method".to_vec(), b"GET".to_vec())]
        );
        // A size update over the advertised 4096 (5-bit prefix integer 4097).
        assert_eq!(
            ours(&mut d, &[0x3f, 0xe2, 0x1f]),
            Err(HpackError::TableSizeTooLarge)
        );
        // Insert one entry, then shrink the table to zero: it is evicted.
        ours(&mut d, &[0x40, 0x01, b'a', 0x01, b'b']).expect("literal with indexing");
        assert_eq!(
            ours(&mut d, &[0xbe]).expect("dynamic 62"),
            [(b"a".to_vec(), b"b".to_vec())]
        );
        ours(&mut d, &[0x20]).expect("size update 0");
        assert_eq!(ours(&mut d, &[0xbe]), Err(HpackError::BadIndex));
        assert_eq!(
            ours(&mut d, &[0x1f, 0xff, 0xff, 0xff, 0xff, 0x7f]),
            Err(HpackError::IntegerOverflow)
        );
    }
}
