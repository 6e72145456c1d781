//! Owns incremental UTF-8 validation for text messages that arrive in
//! fragments (RFC 6455 §8.1).
//!
//! A code point may straddle fragment boundaries, so the validator carries
//! the incomplete trailing sequence (at most 3 bytes) into the next fragment.
//! It fails as soon as the bytes seen so far cannot be the prefix of any valid
//! UTF-8 text, not only at the end of the message, so a peer cannot make us
//! buffer a message that is already known to be bad.

/// The bytes fed so far cannot be (a prefix of) valid UTF-8.
#[derive(Debug, thiserror::Error, Clone, Copy, PartialEq, Eq)]
#[error("invalid UTF-8")]
pub struct InvalidUtf8;

/// Streaming UTF-8 validator; the heavy lifting is `core::str::from_utf8`,
/// whose error already distinguishes "invalid" from "truncated".
#[derive(Debug, Clone, Default)]
pub struct Utf8Validator {
    pending: [u8; 4],
    pending_len: u8,
}

impl Utf8Validator {
    pub const fn new() -> Self {
        Self {
            pending: [0; 4],
            pending_len: 0,
        }
    }

    /// Validates the next chunk of the stream.
    pub fn feed(&mut self, chunk: &[u8]) -> Result<(), InvalidUtf8> {
        let mut rest = chunk;
        if self.pending_len > 0 {
            let have = usize::from(self.pending_len);
            let need = sequence_len(self.pending[0]);
            let take = need.saturating_sub(have).min(rest.len());
            let (head, tail) = rest.split_at(take);
            let filled = have + take;
            let Some(slot) = self.pending.get_mut(have..filled) else {
                return Err(InvalidUtf8);
            };
            slot.copy_from_slice(head);
            match core::str::from_utf8(&self.pending[..filled]) {
                Ok(_) => {
                    self.pending_len = 0;
                    rest = tail;
                }
                // Still a valid prefix, but only acceptable if the chunk ran
                // out before the sequence could be completed.
                Err(e) if e.error_len().is_none() && tail.is_empty() && filled < need => {
                    self.pending_len = filled as u8;
                    return Ok(());
                }
                Err(_) => return Err(InvalidUtf8),
            }
        }
        match core::str::from_utf8(rest) {
            Ok(_) => Ok(()),
            Err(e) if e.error_len().is_none() => {
                let tail = &rest[e.valid_up_to()..];
                let Some(slot) = self.pending.get_mut(..tail.len()) else {
                    return Err(InvalidUtf8);
                };
                slot.copy_from_slice(tail);
                self.pending_len = tail.len() as u8;
                Ok(())
            }
            Err(_) => Err(InvalidUtf8),
        }
    }

    /// Ends the stream: an incomplete trailing sequence is an error. The
    /// validator is reset either way.
    pub fn finish(&mut self) -> Result<(), InvalidUtf8> {
        let complete = self.is_complete();
        self.reset();
        if complete { Ok(()) } else { Err(InvalidUtf8) }
    }

    /// True when no partial code point is carried over.
    pub fn is_complete(&self) -> bool {
        self.pending_len == 0
    }

    pub fn reset(&mut self) {
        self.pending_len = 0;
    }
}

/// Validates a complete (single-frame) text payload.
#[inline]
pub fn validate(bytes: &[u8]) -> Result<(), InvalidUtf8> {
    core::str::from_utf8(bytes)
        .map(|_| ())
        .map_err(|_| InvalidUtf8)
}

/// Encoded length announced by a lead byte. Only lead bytes that
/// `from_utf8` accepted as a valid prefix are ever stored, so the catch-all
/// arm only sees 0xF0..=0xF4.
fn sequence_len(lead: u8) -> usize {
    match lead {
        0xC2..=0xDF => 2,
        0xE0..=0xEF => 3,
        _ => 4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn feed_all(chunks: &[&[u8]]) -> Result<(), (usize, InvalidUtf8)> {
        let mut v = Utf8Validator::new();
        for (i, c) in chunks.iter().enumerate() {
            v.feed(c).map_err(|e| (i, e))?;
        }
        v.finish().map_err(|e| (chunks.len(), e))
    }

    #[test]
    fn multibyte_split_at_every_position() {
        let text = "aé€😀z".as_bytes();
        for i in 0..=text.len() {
            for j in i..=text.len() {
                assert_eq!(
                    feed_all(&[&text[..i], &text[i..j], &text[j..]]),
                    Ok(()),
                    "{i} {j}"
                );
            }
        }
        // One byte per chunk.
        let bytes: Vec<&[u8]> = text.chunks(1).collect();
        assert_eq!(feed_all(&bytes), Ok(()));
    }

    #[test]
    fn invalid_fails_on_the_chunk_that_breaks_it() {
        // 0xF4 0x90 starts a code point above U+10FFFF: dead after 2 bytes.
        assert_eq!(
            feed_all(&[b"ok", &[0xF4], &[0x90], b"x"]),
            Err((2, InvalidUtf8))
        );
        // Surrogate half U+D800 encoded as ED A0 80.
        assert_eq!(
            feed_all(&[b"ab", &[0xED], &[0xA0, 0x80]]),
            Err((2, InvalidUtf8))
        );
        // Overlong encoding of '/'.
        assert_eq!(feed_all(&[&[0xC0], &[0xAF]]), Err((0, InvalidUtf8)));
        // Lone continuation byte.
        assert_eq!(feed_all(&[b"abc", &[0x80]]), Err((1, InvalidUtf8)));
        // Autobahn 6.4.1: the second fragment is U+110000 in UTF-8 form.
        let part1 = "κόσμε".as_bytes();
        assert_eq!(
            feed_all(&[part1, &[0xF4, 0x90, 0x80, 0x80], b"edited"]),
            Err((1, InvalidUtf8))
        );
        // Invalid byte right after a carried partial sequence completes.
        assert_eq!(
            feed_all(&[&[0xE2, 0x82], &[0xAC, 0xFF]]),
            Err((1, InvalidUtf8))
        );
        // Carried partial sequence broken by a non-continuation byte.
        assert_eq!(feed_all(&[&[0xE2], b"a"]), Err((1, InvalidUtf8)));
    }

    #[test]
    fn truncated_at_end_fails_at_finish() {
        assert_eq!(feed_all(&[b"abc", &[0xE2, 0x82]]), Err((2, InvalidUtf8)));
        assert_eq!(
            feed_all(&[&[0xF0], &[0x9F], &[0x98]]),
            Err((3, InvalidUtf8))
        );
        let mut v = Utf8Validator::new();
        v.feed(&[0xC3]).unwrap();
        assert!(!v.is_complete());
        assert!(v.finish().is_err());
        // finish resets, so the validator is reusable.
        assert!(v.is_complete());
        assert_eq!(v.feed(b"fine"), Ok(()));
    }

    #[test]
    fn empty_chunks_are_neutral() {
        assert_eq!(
            feed_all(&[b"", &[0xE2], b"", &[0x82], b"", &[0xAC], b""]),
            Ok(())
        );
    }

    /// Byte strings biased toward UTF-8 edge cases.
    fn utf8ish() -> impl Strategy<Value = Vec<u8>> {
        let byte = prop_oneof![
            4 => any::<char>().prop_map(|c| c.to_string().into_bytes()),
            1 => prop::sample::select(vec![
                0x80u8, 0xBF, 0xC0, 0xC1, 0xC2, 0xDF, 0xE0, 0xED, 0xEF, 0xF0, 0xF4, 0xF5, 0xFF, 0xA0, 0x90,
            ])
            .prop_map(|b| vec![b]),
        ];
        proptest::collection::vec(byte, 0..24).prop_map(|v| v.concat())
    }

    proptest! {
        /// Fails exactly on the first chunk after which the stream stops being
        /// a prefix of valid UTF-8, and at `finish` exactly when the whole is
        /// merely truncated.
        #[test]
        fn agrees_with_std(data in utf8ish(), cuts in proptest::collection::vec(any::<prop::sample::Index>(), 0..6)) {
            let mut cuts: Vec<usize> = cuts.iter().map(|c| c.index(data.len() + 1)).collect();
            cuts.push(data.len());
            cuts.sort_unstable();
            let mut from = 0;
            let mut chunks = Vec::new();
            for cut in cuts {
                chunks.push(&data[from..cut]);
                from = cut;
            }
            let ours = feed_all(&chunks);
            // Oracle: the first chunk whose end makes the prefix invalid.
            let mut expected = Ok(());
            let mut end = 0;
            for (i, c) in chunks.iter().enumerate() {
                end += c.len();
                if let Err(e) = core::str::from_utf8(&data[..end]) {
                    if e.error_len().is_some() {
                        expected = Err((i, InvalidUtf8));
                        break;
                    }
                }
            }
            if expected.is_ok() && core::str::from_utf8(&data).is_err() {
                expected = Err((chunks.len(), InvalidUtf8));
            }
            prop_assert_eq!(ours, expected);
        }
    }
}
