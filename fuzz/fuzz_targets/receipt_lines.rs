//! Fuzz target: the verifier's reading of `receipts.jsonl` (`receipts::
//! UnverifiedChain`, `LineVerifier`): any bytes, read as a chain signed by
//! the golden key (seeds in `fuzz/seeds/receipt_lines/`, the golden chain
//! and variants). Checks, besides "no panic": the batch verifier and the
//! line-by-line one agree; and every line that parses as a receipt, put in
//! chain order and signed by our own signer (or, for a line of format
//! version 5 that is not the last, written without a sig of its own, as a
//! group commit writes it), is never refused for its form (canonical JSON,
//! hash, signature), so the writer and the reader agree on every receipt
//! the fuzzer can spell.
#![no_main]

use ed25519_dalek::SigningKey;
use libfuzzer_sys::fuzz_target;
use receipts::{
    key_id, line_hash, sign_line, unsigned_line, Body, ChainError, LineVerifier, Receipt,
    UnverifiedChain, GENESIS_PREV, UNSIGNED_VERSION,
};

/// The golden chain's key (receipts/tests/support): its seeds verify.
fn key() -> SigningKey {
    SigningKey::from_bytes(&[0x5a; 32])
}

fuzz_target!(|data: &[u8]| {
    let signing = key();
    let public = signing.verifying_key();

    // Batch and streaming verification give the same verdict, at the same line.
    let batch = UnverifiedChain::from_bytes(data.to_vec()).verify(&public);
    let streamed = stream(data, &public);
    match (&batch, &streamed) {
        (Ok(_), Ok(())) => {}
        (Err(a), Err(b)) => assert_eq!(a.line(), b.line(), "batch {a} / streamed {b}"),
        _ => panic!("batch {:?} / streamed {:?}", batch.is_ok(), streamed),
    }
    let _ = UnverifiedChain::from_bytes(data.to_vec()).embedded_key();

    // Every line that parses as a receipt, chained and signed by us.
    let mut prev = GENESIS_PREV.to_string();
    let mut chain = Vec::new();
    let last = data.split(|&b| b == b'\n').count() - 1;
    for (seq, line) in data.split(|&b| b == b'\n').enumerate() {
        let Ok(mut receipt) = serde_json::from_slice::<Receipt>(line) else {
            return;
        };
        receipt.seq = seq as u64;
        receipt.prev = prev.clone();
        receipt.signer = key_id(&public);
        match &mut receipt.body {
            Body::SessionStart { public_key, .. } => *public_key = hex::encode(public.as_bytes()),
            Body::SessionEnd { count, last, .. } => {
                *count = seq as u64 + 1;
                *last = prev.clone();
            }
            _ => {}
        }
        let unsigned = receipt.v == UNSIGNED_VERSION && seq < last;
        let encoded = if unsigned {
            unsigned_line(&receipt)
        } else {
            sign_line(&receipt, &signing)
        };
        let Ok(signed) = encoded else {
            return;
        };
        prev = hex::encode(line_hash(&signed));
        chain.extend_from_slice(&signed);
        chain.push(b'\n');
    }
    if chain.is_empty() {
        return;
    }
    if let Err(err) = UnverifiedChain::from_bytes(chain.clone()).verify(&public) {
        assert!(
            !matches!(
                err,
                ChainError::NotCanonical { .. }
                    | ChainError::HashMismatch { .. }
                    | ChainError::BadGenesis { .. }
                    | ChainError::BadSignature { .. }
                    | ChainError::WrongSigner { .. }
                    | ChainError::SeqMismatch { .. }
                    | ChainError::EndHashMismatch { .. }
            ),
            "our own signed line refused: {err}\n{}",
            String::from_utf8_lossy(&chain)
        );
    }
});

/// The chain line by line, as crash recovery reads a log it reopens.
fn stream(data: &[u8], key: &ed25519_dalek::VerifyingKey) -> Result<(), ChainError> {
    let mut verifier = LineVerifier::new(*key);
    let mut rest = data;
    let mut line_no = 0;
    while !rest.is_empty() {
        line_no += 1;
        let Some(end) = rest.iter().position(|&b| b == b'\n') else {
            return Err(ChainError::Torn { line: line_no });
        };
        verifier.push(&rest[..end])?;
        rest = &rest[end + 1..];
    }
    verifier.finish()
}
