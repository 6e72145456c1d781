//! Decoding a byte stream given in chunks, for the frame tests and the
//! fuzz targets (built only for them).

use bytes::BytesMut;

use super::{FrameError, Message, MessageDecoder, Role};

/// Every message `chunks` decode to, fed one after another to a new
/// [`MessageDecoder`] of `role` and `max`, and the error that stopped it,
/// if any; with `until_close`, nothing after the first Close (as
/// tungstenite stops). For the tests and the fuzz targets.
pub(crate) fn decode_chunks<'a>(
    role: Role,
    max: usize,
    chunks: impl IntoIterator<Item = &'a [u8]>,
    until_close: bool,
) -> (Vec<Message>, Option<FrameError>) {
    let mut decoder = MessageDecoder::new(role, max);
    let mut buf = BytesMut::new();
    let mut messages = Vec::new();
    for chunk in chunks {
        buf.extend_from_slice(chunk);
        loop {
            match decoder.decode(&mut buf) {
                Ok(Some(message)) => {
                    let close = until_close && matches!(message, Message::Close(_));
                    messages.push(message);
                    if close {
                        return (messages, None);
                    }
                }
                Ok(None) => break,
                Err(e) => return (messages, Some(e)),
            }
        }
    }
    (messages, None)
}
