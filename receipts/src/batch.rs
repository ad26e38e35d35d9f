//! Batch verification of many ed25519 signatures by one key.
//!
//! The same equation as `ed25519_dalek::verify_batch` (cofactorless, with a
//! random 128-bit weight per signature), with one saving that only holds for
//! a single signer: the `n` terms `[z_i k_i] A` collapse into one
//! `[Σ z_i k_i] A`, so the multiscalar multiplication has `n + 2` points
//! instead of `2n + 1`, and the `n` dropped ones had the full-width scalars.
//! A receipt chain always has one signer. A `false` answer says only that
//! some signature is bad: callers then check one at a time with
//! `verify_strict` to name it.

use curve25519_dalek::constants::ED25519_BASEPOINT_POINT;
use curve25519_dalek::edwards::{CompressedEdwardsY, EdwardsPoint};
use curve25519_dalek::scalar::Scalar;
use curve25519_dalek::traits::{IsIdentity, VartimeMultiscalarMul};
use ed25519_dalek::{Signature, VerifyingKey};
use sha2::{Digest, Sha512};

/// Whether every `(message, signature)` is valid under `key`.
pub(crate) fn verify_one_signer(key: &VerifyingKey, items: &[(&[u8], &Signature)]) -> bool {
    if items.is_empty() {
        return true;
    }
    // verify_strict refuses small-order keys and R values; so does this.
    if key.is_weak() {
        return false;
    }
    let a = key.to_edwards();
    let mut rs: Vec<EdwardsPoint> = Vec::with_capacity(items.len());
    let mut ss: Vec<Scalar> = Vec::with_capacity(items.len());
    let mut ks: Vec<Scalar> = Vec::with_capacity(items.len());
    // The weights are derived from everything being verified (as the dalek
    // batch verifier does with a transcript), so a forger cannot pick
    // signatures that cancel for weights they know in advance.
    let mut transcript = Sha512::new();
    transcript.update(b"openclaw receipts: one-signer ed25519 batch");
    transcript.update(key.as_bytes());
    for (message, sig) in items {
        let Some(r) = CompressedEdwardsY(*sig.r_bytes()).decompress() else {
            return false;
        };
        if r.is_small_order() {
            return false;
        }
        let Some(s) = Option::<Scalar>::from(Scalar::from_canonical_bytes(*sig.s_bytes())) else {
            return false;
        };
        let hram: [u8; 64] = Sha512::new()
            .chain_update(sig.r_bytes())
            .chain_update(key.as_bytes())
            .chain_update(message)
            .finalize()
            .into();
        transcript.update(hram);
        transcript.update(sig.s_bytes());
        rs.push(r);
        ss.push(s);
        ks.push(Scalar::from_bytes_mod_order_wide(&hram));
    }
    let seed = transcript.finalize();
    let mut b_coefficient = Scalar::ZERO;
    let mut a_coefficient = Scalar::ZERO;
    let mut zs: Vec<Scalar> = Vec::with_capacity(items.len());
    for (i, (s, k)) in ss.iter().zip(&ks).enumerate() {
        let block = Sha512::new()
            .chain_update(seed)
            .chain_update((i as u64).to_le_bytes())
            .finalize();
        let mut z = [0u8; 16];
        z.copy_from_slice(&block[..16]);
        let z = Scalar::from(u128::from_le_bytes(z));
        b_coefficient += z * s;
        a_coefficient += z * k;
        zs.push(z);
    }
    // [Σ z_i s_i] B = Σ [z_i] R_i + [Σ z_i k_i] A, i.e. this sum is the identity:
    let check = EdwardsPoint::vartime_multiscalar_mul(
        std::iter::once(-b_coefficient)
            .chain(std::iter::once(a_coefficient))
            .chain(zs),
        std::iter::once(&ED25519_BASEPOINT_POINT)
            .chain(std::iter::once(&a))
            .chain(rs.iter()),
    );
    check.is_identity()
}

#[cfg(test)]
mod tests {
    use super::*;
    use ed25519_dalek::{Signer, SigningKey};

    fn signed(key: &SigningKey, n: usize) -> (Vec<Vec<u8>>, Vec<Signature>) {
        let messages: Vec<Vec<u8>> = (0..n)
            .map(|i| format!("receipt line {i}").into_bytes())
            .collect();
        let sigs = messages.iter().map(|m| key.sign(m)).collect();
        (messages, sigs)
    }

    fn items<'a>(m: &'a [Vec<u8>], s: &'a [Signature]) -> Vec<(&'a [u8], &'a Signature)> {
        m.iter().map(Vec::as_slice).zip(s).collect()
    }

    #[test]
    fn accepts_valid_batches_and_rejects_any_single_change() {
        let key = SigningKey::from_bytes(&[7; 32]);
        let public = key.verifying_key();
        let (mut messages, mut sigs) = signed(&key, 40);
        assert!(verify_one_signer(&public, &items(&messages, &sigs)));
        assert!(verify_one_signer(
            &public,
            &items(&messages[..1], &sigs[..1])
        ));
        assert!(verify_one_signer(&public, &[]));
        for i in [0, 17, 39] {
            // A changed message.
            messages[i][0] ^= 1;
            assert!(!verify_one_signer(&public, &items(&messages, &sigs)));
            messages[i][0] ^= 1;
            // A changed R, a changed s, and an s that is not reduced.
            for byte in [3, 40] {
                let mut b = sigs[i].to_bytes();
                b[byte] ^= 1;
                let good = std::mem::replace(&mut sigs[i], Signature::from_bytes(&b));
                assert!(!verify_one_signer(&public, &items(&messages, &sigs)));
                sigs[i] = good;
            }
            let mut b = sigs[i].to_bytes();
            b[63] |= 0xf0;
            let good = std::mem::replace(&mut sigs[i], Signature::from_bytes(&b));
            assert!(!verify_one_signer(&public, &items(&messages, &sigs)));
            sigs[i] = good;
        }
        // Two signatures swapped between messages.
        sigs.swap(3, 4);
        assert!(!verify_one_signer(&public, &items(&messages, &sigs)));
        sigs.swap(3, 4);
        // Another key's valid signature on one line.
        let other = SigningKey::from_bytes(&[8; 32]);
        sigs[5] = other.sign(&messages[5]);
        assert!(!verify_one_signer(&public, &items(&messages, &sigs)));
        // And all of them valid under the other key, but not this one.
        let (m2, s2) = signed(&other, 10);
        assert!(!verify_one_signer(&public, &items(&m2, &s2)));
        assert!(verify_one_signer(&other.verifying_key(), &items(&m2, &s2)));
    }

    #[test]
    fn agrees_with_the_dalek_batch_verifier() {
        let key = SigningKey::from_bytes(&[9; 32]);
        let (messages, mut sigs) = signed(&key, 64);
        let refs: Vec<&[u8]> = messages.iter().map(Vec::as_slice).collect();
        let keys = vec![key.verifying_key(); 64];
        for bad in [None, Some(10), Some(63)] {
            if let Some(i) = bad {
                sigs[i] = key.sign(b"something else");
            }
            let ours = verify_one_signer(&key.verifying_key(), &items(&messages, &sigs));
            let theirs = ed25519_dalek::verify_batch(&refs, &sigs, &keys).is_ok();
            assert_eq!(ours, theirs, "bad: {bad:?}");
        }
    }
}
