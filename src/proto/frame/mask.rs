//! Owns RFC 6455 §5.3 payload masking: XOR with a 4-byte key, word-at-a-time.
//!
//! Masking is an involution, so the same functions mask (client encode) and
//! unmask (server decode).

/// XORs `buf` in place with `mask`, the first byte of `buf` taking `mask[0]`.
///
/// Works on 8-byte words built from the key repeated twice. Everything is
/// safe code: `from_ne_bytes`/`to_ne_bytes` on unaligned chunks compile to
/// plain loads/stores and LLVM vectorizes the loop, so there is no need for
/// `align_to` and the `unsafe` it would bring.
#[inline]
pub fn apply_mask(buf: &mut [u8], mask: [u8; 4]) {
    let word = u64::from_ne_bytes([
        mask[0], mask[1], mask[2], mask[3], mask[0], mask[1], mask[2], mask[3],
    ]);
    let mut chunks = buf.chunks_exact_mut(8);
    for chunk in &mut chunks {
        // Always Ok (chunks_exact_mut yields exactly 8 bytes); the check is
        // optimized away and avoids an unwrap.
        if let Ok(bytes) = <&mut [u8; 8]>::try_from(chunk) {
            *bytes = (u64::from_ne_bytes(*bytes) ^ word).to_ne_bytes();
        }
    }
    // Every full chunk is a multiple of 4 bytes long, so the tail restarts at
    // key phase 0.
    for (byte, key) in chunks.into_remainder().iter_mut().zip(mask.iter().cycle()) {
        *byte ^= key;
    }
}

/// Like [`apply_mask`] for a slice that starts `offset` bytes into a masked
/// payload, for unmasking a payload that arrives in pieces.
#[inline]
pub fn apply_mask_at(buf: &mut [u8], mask: [u8; 4], offset: usize) {
    let mut rotated = mask;
    rotated.rotate_left(offset % 4);
    apply_mask(buf, rotated);
}

/// Byte-at-a-time reference implementation: the oracle for tests and the
/// baseline for the benchmark.
#[doc(hidden)]
pub fn apply_mask_naive(buf: &mut [u8], mask: [u8; 4]) {
    for (i, byte) in buf.iter_mut().enumerate() {
        *byte ^= mask[i % 4];
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn matches_naive_for_every_length_and_alignment() {
        let mask = [0x6d, 0xb6, 0xb2, 0x80];
        let backing: Vec<u8> = (0..128u32).map(|i| (i * 37 + 11) as u8).collect();
        for len in 0..100 {
            for start in 0..8 {
                let mut fast = backing.clone();
                let mut slow = backing.clone();
                apply_mask(&mut fast[start..start + len], mask);
                apply_mask_naive(&mut slow[start..start + len], mask);
                assert_eq!(fast, slow, "len {len} start {start}");
            }
        }
    }

    #[test]
    fn masking_twice_is_identity() {
        let original: Vec<u8> = (0..=255).collect();
        let mut buf = original.clone();
        apply_mask(&mut buf, [1, 2, 3, 4]);
        assert_ne!(buf, original);
        apply_mask(&mut buf, [1, 2, 3, 4]);
        assert_eq!(buf, original);
    }

    #[test]
    fn rfc_6455_example() {
        // RFC 6455 §5.7: "Hello" masked with 37 fa 21 3d.
        let mut buf = *b"Hello";
        apply_mask(&mut buf, [0x37, 0xfa, 0x21, 0x3d]);
        assert_eq!(buf, [0x7f, 0x9f, 0x4d, 0x51, 0x58]);
    }

    proptest! {
        #[test]
        fn fast_equals_naive(
            data in proptest::collection::vec(any::<u8>(), 0..300),
            start in 0usize..16,
            mask in any::<[u8; 4]>(),
        ) {
            let start = start.min(data.len());
            let mut fast = data.clone();
            let mut slow = data;
            apply_mask(&mut fast[start..], mask);
            apply_mask_naive(&mut slow[start..], mask);
            prop_assert_eq!(fast, slow);
        }

        #[test]
        fn piecewise_equals_whole(
            data in proptest::collection::vec(any::<u8>(), 0..300),
            cuts in proptest::collection::vec(any::<prop::sample::Index>(), 0..6),
            mask in any::<[u8; 4]>(),
        ) {
            let mut cuts: Vec<usize> = cuts.iter().map(|c| c.index(data.len() + 1)).collect();
            cuts.sort_unstable();
            let mut whole = data.clone();
            apply_mask(&mut whole, mask);
            let mut pieces = data;
            let mut from = 0;
            for cut in cuts.into_iter().chain(std::iter::once(pieces.len())) {
                apply_mask_at(&mut pieces[from..cut], mask, from);
                from = cut;
            }
            prop_assert_eq!(pieces, whole);
        }
    }
}
