//! Entry points for the fuzz targets in `fuzz/` (not part of the API): the
//! parsers that see sandbox bytes, driven with arbitrary input. Each checks
//! a property that holds for every input (no panic, and the reading does
//! not depend on how the bytes were split into reads), so a finding is a
//! crash or a failed assertion.

use std::net::Ipv4Addr;

use crate::http::guard::H1Scanner;
use crate::http::hpack::HpackDecoder;

/// The HTTP/1.1 smuggling guard: the first byte picks a split point; the
/// verdict for the stream fed whole must equal the verdict fed in two reads
/// and fed byte by byte (the guard reads a socket, whose reads split
/// anywhere).
pub fn h1_guard(data: &[u8]) {
    let Some((&cut, stream)) = data.split_first() else {
        return;
    };
    let whole = H1Scanner::new(8192).feed(stream);
    let mut two = H1Scanner::new(8192);
    let (a, b) = stream.split_at(usize::from(cut).min(stream.len()));
    let split = two.feed(a).and_then(|()| two.feed(b));
    assert_eq!(whole, split, "two reads");
    let mut bytewise = H1Scanner::new(8192);
    let by_byte = stream.chunks(1).try_for_each(|c| bytewise.feed(c));
    assert_eq!(whole, by_byte, "byte by byte");
}

/// The HPACK reader: `data` is a sequence of header blocks, each preceded
/// by one length byte, decoded in order on one connection's state (so the
/// dynamic table carries over, as on a real connection). Fields are counted
/// so the callback's inputs are touched.
pub fn hpack(data: &[u8]) {
    let mut decoder = HpackDecoder::new(4096);
    let mut rest = data;
    let mut total = 0usize;
    while let Some((&len, tail)) = rest.split_first() {
        let (block, next) = tail.split_at(usize::from(len).min(tail.len()));
        rest = next;
        if decoder
            .decode(block, |name, value| total += name.len() + value.len())
            .is_err()
        {
            // As for h2: the connection is unusable after an error.
            return;
        }
    }
    std::hint::black_box(total);
}

/// DNS query parsing and the answer built for it: whatever the query, the
/// answer (if any) parses as a DNS message with the query's id.
pub fn dns_query(data: &[u8]) {
    use hickory_proto::op::Message;
    let gate = crate::decide::AllowAll;
    if let Some(answer) = crate::dns::answer(data, &gate, Ipv4Addr::new(10, 0, 0, 1)) {
        let parsed = Message::from_vec(&answer).expect("the proxy's answer parses");
        assert_eq!(u16::from_be_bytes([data[0], data[1]]), parsed.metadata.id);
    }
}
