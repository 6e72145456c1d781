//! Owns the RFC 6455 framing layer, sans-io: frame header parsing and
//! encoding, payload (un)masking, reassembly of fragmented messages and every
//! receive-side rule of RFC 6455 §5 and §7.4 (masking direction, reserved bits
//! and opcodes, control frame limits, fragmentation order, UTF-8 of text and
//! close reasons, close codes, size limits).
//!
//! Everything works on `bytes` buffers the caller owns: decoding splits frames
//! off a [`BytesMut`] read buffer (payloads are unmasked in place and handed
//! out zero-copy), encoding appends to a [`BytesMut`] or builds one shared
//! [`Bytes`] for fan-out. No I/O, clock or threads live here.
//!
//! Length encodings: like tungstenite (the reference implementation, whose
//! `FrameHeader::parse` just reads whichever length form the sender chose), a
//! payload length written in a longer form than necessary (e.g. 5 as a 16-bit
//! or 64-bit length) is accepted. RFC 6455 §5.2 puts the minimal-encoding
//! "MUST" on the sender and asks nothing of the receiver, and rejecting would
//! only break interop with sloppy but harmless peers. The encoders here always
//! write the minimal form. A 64-bit length with the most significant bit set is
//! rejected ([`FrameError::PayloadLengthMsbSet`]), which tungstenite does not
//! check explicitly.

pub mod mask;
pub mod utf8;

use bytes::{Buf, BufMut, Bytes, BytesMut};

#[doc(hidden)]
pub use mask::apply_mask_naive;
pub use mask::{apply_mask, apply_mask_at};
pub use utf8::{InvalidUtf8, Utf8Validator};

/// Longest possible frame header: 2 bytes + 8-byte length + 4-byte mask key.
pub const MAX_HEADER_LEN: usize = 14;

/// RFC 6455 §5.5: control frame payloads are at most 125 bytes.
pub const MAX_CONTROL_PAYLOAD: usize = 125;

/// Longest close reason that fits a control frame next to the 2-byte code.
pub const MAX_CLOSE_REASON: usize = MAX_CONTROL_PAYLOAD - 2;

/// The opcodes RFC 6455 defines; the reserved ones are refused at parse time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum OpCode {
    Continuation,
    Text,
    Binary,
    Close,
    Ping,
    Pong,
}

impl OpCode {
    /// Every opcode, in wire order.
    pub const ALL: [OpCode; 6] = [
        Self::Continuation,
        Self::Text,
        Self::Binary,
        Self::Close,
        Self::Ping,
        Self::Pong,
    ];

    /// Maps the 4-bit wire value; `None` for the reserved values 3–7, 11–15.
    pub const fn from_u8(value: u8) -> Option<Self> {
        match value {
            0x0 => Some(Self::Continuation),
            0x1 => Some(Self::Text),
            0x2 => Some(Self::Binary),
            0x8 => Some(Self::Close),
            0x9 => Some(Self::Ping),
            0xA => Some(Self::Pong),
            _ => None,
        }
    }

    pub const fn as_u8(self) -> u8 {
        match self {
            Self::Continuation => 0x0,
            Self::Text => 0x1,
            Self::Binary => 0x2,
            Self::Close => 0x8,
            Self::Ping => 0x9,
            Self::Pong => 0xA,
        }
    }

    pub const fn is_control(self) -> bool {
        matches!(self, Self::Close | Self::Ping | Self::Pong)
    }
}

/// Which end of the connection this codec plays; it fixes the masking
/// direction (RFC 6455 §5.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Decodes frames that must be masked (client→server), encodes unmasked.
    Server,
    /// Decodes frames that must be unmasked (server→client), encodes masked.
    /// Used by the load generator and tests.
    Client,
}

/// One decoded frame; `payload` is already unmasked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    pub fin: bool,
    pub opcode: OpCode,
    pub payload: Bytes,
}

/// A validated close payload (RFC 6455 §5.5.1).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CloseFrame {
    pub code: u16,
    /// Valid UTF-8, at most [`MAX_CLOSE_REASON`] bytes.
    pub reason: Bytes,
}

impl CloseFrame {
    /// The reason as text. The decoder already validated it, so the empty
    /// fallback is only reachable for hand-built values.
    pub fn reason_str(&self) -> &str {
        core::str::from_utf8(&self.reason).unwrap_or_default()
    }
}

/// A complete application or control message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    /// Validated UTF-8.
    Text(Bytes),
    Binary(Bytes),
    Ping(Bytes),
    Pong(Bytes),
    Close(Option<CloseFrame>),
}

/// A violation of RFC 6455 by the peer, or of our limits. Any of them fails
/// the connection; [`FrameError::close_code`] picks the status to send.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum FrameError {
    #[error("client frame is not masked (RFC 6455 §5.1)")]
    UnmaskedFrameFromClient,
    #[error("server frame is masked (RFC 6455 §5.1)")]
    MaskedFrameFromServer,
    #[error("reserved bits set without a negotiated extension (RFC 6455 §5.2)")]
    ReservedBitsSet,
    #[error("reserved opcode {0:#x} (RFC 6455 §5.2)")]
    UnknownOpcode(u8),
    #[error("control frame without FIN (RFC 6455 §5.5)")]
    FragmentedControlFrame,
    #[error("control frame payload of {0} bytes exceeds 125 (RFC 6455 §5.5)")]
    ControlFrameTooLong(usize),
    #[error("64-bit payload length has its most significant bit set (RFC 6455 §5.2)")]
    PayloadLengthMsbSet,
    #[error("invalid UTF-8 in text message or close reason (RFC 6455 §8.1)")]
    InvalidUtf8,
    #[error("message exceeds the {limit}-byte limit")]
    MessageTooBig { limit: usize },
    #[error("close code {0} may not be sent on the wire (RFC 6455 §7.4)")]
    InvalidCloseCode(u16),
    #[error("close payload of 1 byte cannot hold a status code (RFC 6455 §5.5.1)")]
    CloseFrameTooShort,
    #[error("continuation frame without a message in progress (RFC 6455 §5.4)")]
    UnexpectedContinuation,
    #[error("new data frame while a fragmented message is in progress (RFC 6455 §5.4)")]
    ExpectedContinuation,
}

impl From<InvalidUtf8> for FrameError {
    fn from(_: InvalidUtf8) -> Self {
        Self::InvalidUtf8
    }
}

impl FrameError {
    /// The close code to fail the connection with (RFC 6455 §7.4.1).
    pub const fn close_code(&self) -> u16 {
        match self {
            Self::InvalidUtf8 => 1007,
            Self::MessageTooBig { .. } => 1009,
            _ => 1002,
        }
    }
}

/// Close codes a peer may put on the wire (RFC 6455 §7.4, IANA registry).
///
/// 1004 is reserved, 1005/1006/1015 are "MUST NOT be set" pseudo-codes, and
/// 0–999, 1016–2999 are unassigned, so all of these fail the connection. The
/// registered 1012–1014 are accepted: current Autobahn (case 7.9.x) no longer
/// lists them as invalid, while 7.7.x checks 1000–1003, 1007–1011 and
/// 3000/3999/4000/4999 are echoed back cleanly.
pub const fn is_valid_close_code(code: u16) -> bool {
    matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999)
}

/// A parsed frame header. `header_len` counts the bytes it occupies on the
/// wire, mask key included.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHeader {
    pub fin: bool,
    pub opcode: OpCode,
    pub mask: Option<[u8; 4]>,
    pub payload_len: u64,
    pub header_len: usize,
}

/// Parses the frame header at the start of `buf` without consuming anything.
///
/// `Ok(None)` means the header is not complete yet. Each rule is checked as
/// soon as the bytes it depends on are present, so a bad frame is refused
/// after its first two bytes where possible.
pub fn parse_header(buf: &[u8], role: Role) -> Result<Option<FrameHeader>, FrameError> {
    let &[b0, b1, ..] = buf else {
        return Ok(None);
    };
    if b0 & 0x70 != 0 {
        return Err(FrameError::ReservedBitsSet);
    }
    let opcode = OpCode::from_u8(b0 & 0x0F).ok_or(FrameError::UnknownOpcode(b0 & 0x0F))?;
    let fin = b0 & 0x80 != 0;
    let masked = b1 & 0x80 != 0;
    match (role, masked) {
        (Role::Server, false) => return Err(FrameError::UnmaskedFrameFromClient),
        (Role::Client, true) => return Err(FrameError::MaskedFrameFromServer),
        _ => {}
    }
    if opcode.is_control() && !fin {
        return Err(FrameError::FragmentedControlFrame);
    }
    let (payload_len, mut header_len) = match b1 & 0x7F {
        126 => match buf.get(2..4) {
            Some(&[hi, lo]) => (u64::from(u16::from_be_bytes([hi, lo])), 4),
            _ => return Ok(None),
        },
        127 => {
            let Some(Ok(ext)) = buf.get(2..10).map(<[u8; 8]>::try_from) else {
                return Ok(None);
            };
            let len = u64::from_be_bytes(ext);
            if len >> 63 != 0 {
                return Err(FrameError::PayloadLengthMsbSet);
            }
            (len, 10)
        }
        short => (u64::from(short), 2),
    };
    if opcode.is_control() && payload_len > MAX_CONTROL_PAYLOAD as u64 {
        return Err(FrameError::ControlFrameTooLong(
            usize::try_from(payload_len).unwrap_or(usize::MAX),
        ));
    }
    let mask = if masked {
        let Some(Ok(key)) = buf.get(header_len..header_len + 4).map(<[u8; 4]>::try_from) else {
            return Ok(None);
        };
        header_len += 4;
        Some(key)
    } else {
        None
    };
    Ok(Some(FrameHeader {
        fin,
        opcode,
        mask,
        payload_len,
        header_len,
    }))
}

/// Checks `payload_len` against `limit` and returns the frame's total wire
/// length. Comparing in u64 first keeps a huge length from wrapping when
/// narrowed on 32-bit targets.
fn frame_len(header: &FrameHeader, limit: usize, reported: usize) -> Result<usize, FrameError> {
    let too_big = FrameError::MessageTooBig { limit: reported };
    if header.payload_len > limit as u64 {
        return Err(too_big);
    }
    usize::try_from(header.payload_len)
        .ok()
        .and_then(|len| len.checked_add(header.header_len))
        .ok_or(too_big)
}

/// Splits a complete frame (`total` bytes, header included) off `buf`,
/// unmasking the payload in place from payload byte `unmasked` on (the bytes
/// before it were already unmasked in place while the frame was arriving).
fn split_frame(buf: &mut BytesMut, header: &FrameHeader, total: usize, unmasked: usize) -> Frame {
    let mut wire = buf.split_to(total);
    wire.advance(header.header_len);
    if let Some(key) = header.mask {
        if unmasked == 0 {
            apply_mask(&mut wire, key);
        } else if let Some(rest) = wire.get_mut(unmasked..) {
            apply_mask_at(rest, key, unmasked);
        }
    }
    Frame {
        fin: header.fin,
        opcode: header.opcode,
        payload: wire.freeze(),
    }
}

/// Decodes one frame from the front of `buf`.
///
/// `Ok(None)` means more bytes are needed; nothing is consumed then. On
/// `Ok(Some)` the frame's bytes are split off `buf` and the payload is a
/// zero-copy view of them, unmasked in place. A frame announcing more than
/// `max_frame_payload` bytes fails with [`FrameError::MessageTooBig`] as soon
/// as its header is readable, so the payload is never waited for. On error
/// nothing is consumed, but the stream is unusable.
///
/// Only frame-local rules are checked here; fragmentation order, UTF-8 and
/// close payloads are [`MessageDecoder`]'s job.
pub fn decode_frame(
    buf: &mut BytesMut,
    role: Role,
    max_frame_payload: usize,
) -> Result<Option<Frame>, FrameError> {
    let Some(header) = parse_header(buf, role)? else {
        return Ok(None);
    };
    let total = frame_len(&header, max_frame_payload, max_frame_payload)?;
    if buf.len() < total {
        return Ok(None);
    }
    Ok(Some(split_frame(buf, &header, total, 0)))
}

/// A data message whose first fragment arrived but not its last.
#[derive(Debug)]
struct Partial {
    text: bool,
    data: BytesMut,
    utf8: Utf8Validator,
}

/// Turns a stream of frames into messages (RFC 6455 §5.4): reassembles
/// fragmented data messages, passes control frames interleaved between
/// fragments straight through, validates text and close frames, and enforces
/// a per-message size limit.
///
/// Single-frame messages are zero-copy slices of the read buffer; only
/// fragmented messages are copied, into an accumulator.
///
/// UTF-8 fails fast (RFC 6455 §8.1, Autobahn 6.4.3/6.4.4): while a text
/// frame (or a continuation of a text message) is still arriving, the part
/// of its payload already in the buffer is unmasked in place and validated,
/// so a sequence that cannot be valid UTF-8 fails the connection before the
/// rest of the frame is sent. Each byte is unmasked and validated once: the
/// decoder remembers how far it got ([`MessageDecoder::decode`]'s caller
/// only ever appends to the buffer). A frame that arrives whole takes the
/// plain path, with no extra work.
#[derive(Debug)]
pub struct MessageDecoder {
    role: Role,
    max_message: usize,
    partial: Option<Partial>,
    /// Payload bytes of the incomplete frame at the front of the buffer that
    /// are already unmasked in place and validated; 0 when none are.
    checked: usize,
    /// The validator for an incomplete *first* text frame (a continuation
    /// uses its message's validator in `partial`).
    head_utf8: Utf8Validator,
}

impl MessageDecoder {
    /// `max_message` bounds the payload of a whole data message, all
    /// fragments together. Control frames are bounded by the protocol's 125
    /// bytes instead.
    pub fn new(role: Role, max_message: usize) -> Self {
        Self {
            role,
            max_message,
            partial: None,
            checked: 0,
            head_utf8: Utf8Validator::new(),
        }
    }

    /// Decodes the next message from the front of `buf`.
    ///
    /// `Ok(None)` means more bytes are needed. Complete frames are consumed
    /// even then (fragments move into the accumulator); an incomplete trailing
    /// frame is left in `buf`. Fragmentation, size and control-frame rules are
    /// enforced from the header alone, before the payload arrives. After an
    /// error the connection must be failed; the decoder's state is not
    /// meaningful any more.
    ///
    /// The received part of an incomplete text frame's payload is unmasked
    /// in place (the decoder tracks how much), so between calls the caller
    /// may append to `buf` but must not otherwise change it, short of
    /// [`MessageDecoder::reset`] together with clearing `buf`.
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Message>, FrameError> {
        loop {
            let Some(header) = parse_header(buf, self.role)? else {
                return Ok(None);
            };
            let total = self.admit(&header)?;
            if buf.len() < total {
                self.check_prefix(buf, &header)?;
                return Ok(None);
            }
            let checked = core::mem::take(&mut self.checked);
            let frame = split_frame(buf, &header, total, checked);
            if let Some(message) = self.on_frame(frame, checked)? {
                return Ok(Some(message));
            }
        }
    }

    /// Drops any partially received message.
    pub fn reset(&mut self) {
        self.partial = None;
        self.checked = 0;
        self.head_utf8.reset();
    }

    /// Fail-fast UTF-8 for a text frame whose payload is still arriving:
    /// unmasks the newly received payload bytes in place and feeds them to
    /// the message's validator. An incomplete code point at the end is fine;
    /// a sequence that cannot be valid is [`FrameError::InvalidUtf8`].
    fn check_prefix(&mut self, buf: &mut BytesMut, header: &FrameHeader) -> Result<(), FrameError> {
        let utf8 = match (header.opcode, self.partial.as_mut()) {
            (OpCode::Text, _) => &mut self.head_utf8,
            (OpCode::Continuation, Some(partial)) if partial.text => &mut partial.utf8,
            _ => return Ok(()),
        };
        // The frame is incomplete, so everything after the header is payload.
        let Some(fresh) = buf.get_mut(header.header_len + self.checked..) else {
            return Ok(());
        };
        if fresh.is_empty() {
            return Ok(());
        }
        if let Some(key) = header.mask {
            apply_mask_at(fresh, key, self.checked);
        }
        self.checked += fresh.len();
        utf8.feed(fresh)?;
        Ok(())
    }

    /// True when no partial message is held and no incomplete frame at the
    /// front of the buffer has been unmasked in part (so the buffer may be
    /// handed to another decoder).
    pub fn is_idle(&self) -> bool {
        self.partial.is_none() && self.checked == 0
    }

    /// Applies the rules that depend on decoder state to a frame header and
    /// returns the frame's wire length.
    fn admit(&self, header: &FrameHeader) -> Result<usize, FrameError> {
        let budget = match (header.opcode, &self.partial) {
            // parse_header already capped these at 125 bytes.
            (OpCode::Close | OpCode::Ping | OpCode::Pong, _) => MAX_CONTROL_PAYLOAD,
            (OpCode::Continuation, None) => return Err(FrameError::UnexpectedContinuation),
            (OpCode::Continuation, Some(partial)) => {
                self.max_message.saturating_sub(partial.data.len())
            }
            (OpCode::Text | OpCode::Binary, Some(_)) => {
                return Err(FrameError::ExpectedContinuation);
            }
            (OpCode::Text | OpCode::Binary, None) => self.max_message,
        };
        frame_len(header, budget, self.max_message)
    }

    /// Handles a complete frame. `checked` payload bytes of a text frame
    /// were already validated by [`Self::check_prefix`], with the state in
    /// `head_utf8` (first frame) or the message's validator (continuation).
    fn on_frame(&mut self, frame: Frame, checked: usize) -> Result<Option<Message>, FrameError> {
        let Frame {
            fin,
            opcode,
            payload,
        } = frame;
        let unchecked = payload.get(checked..).unwrap_or_default();
        let message = match opcode {
            OpCode::Ping => Message::Ping(payload),
            OpCode::Pong => Message::Pong(payload),
            OpCode::Close => Message::Close(parse_close(payload)?),
            OpCode::Text if fin && checked == 0 => {
                utf8::validate(&payload)?;
                Message::Text(payload)
            }
            OpCode::Text if fin => {
                let mut utf8 = core::mem::take(&mut self.head_utf8);
                utf8.feed(unchecked)?;
                utf8.finish()?;
                Message::Text(payload)
            }
            OpCode::Binary if fin => Message::Binary(payload),
            OpCode::Text | OpCode::Binary => {
                let text = opcode == OpCode::Text;
                let mut utf8 = core::mem::take(&mut self.head_utf8);
                if text {
                    utf8.feed(unchecked)?;
                }
                self.partial = Some(Partial {
                    text,
                    data: BytesMut::from(&payload[..]),
                    utf8,
                });
                return Ok(None);
            }
            OpCode::Continuation => {
                let Some(partial) = self.partial.as_mut() else {
                    return Err(FrameError::UnexpectedContinuation);
                };
                if partial.text {
                    partial.utf8.feed(unchecked)?;
                }
                partial.data.extend_from_slice(&payload);
                if !fin {
                    return Ok(None);
                }
                let Some(mut done) = self.partial.take() else {
                    return Err(FrameError::UnexpectedContinuation);
                };
                let data = done.data.freeze();
                if done.text {
                    done.utf8.finish()?;
                    Message::Text(data)
                } else {
                    Message::Binary(data)
                }
            }
        };
        Ok(Some(message))
    }
}

/// Validates a close payload (RFC 6455 §5.5.1, §7.4).
pub fn parse_close(payload: Bytes) -> Result<Option<CloseFrame>, FrameError> {
    match *payload {
        [] => Ok(None),
        [_] => Err(FrameError::CloseFrameTooShort),
        [hi, lo, ..] => {
            let code = u16::from_be_bytes([hi, lo]);
            if !is_valid_close_code(code) {
                return Err(FrameError::InvalidCloseCode(code));
            }
            let reason = payload.slice(2..);
            utf8::validate(&reason)?;
            Ok(Some(CloseFrame { code, reason }))
        }
    }
}

/// Writes a frame header into `dst` and returns its length. The length is
/// always encoded in its minimal form; a mask key sets the MASK bit.
pub fn encode_header(
    dst: &mut [u8; MAX_HEADER_LEN],
    fin: bool,
    opcode: OpCode,
    payload_len: usize,
    mask: Option<[u8; 4]>,
) -> usize {
    dst[0] = if fin { 0x80 } else { 0 } | opcode.as_u8();
    let mask_bit = if mask.is_some() { 0x80 } else { 0 };
    let mut len = if payload_len < 126 {
        dst[1] = mask_bit | payload_len as u8;
        2
    } else if let Ok(short) = u16::try_from(payload_len) {
        dst[1] = mask_bit | 126;
        dst[2..4].copy_from_slice(&short.to_be_bytes());
        4
    } else {
        dst[1] = mask_bit | 127;
        dst[2..10].copy_from_slice(&(payload_len as u64).to_be_bytes());
        10
    };
    if let Some(key) = mask {
        dst[len..len + 4].copy_from_slice(&key);
        len += 4;
    }
    len
}

/// Appends one frame to `dst`. With a mask key (client role) the payload is
/// masked as it is copied; without one (server role) it is copied as is.
///
/// Control frame limits are the caller's contract (checked in debug builds):
/// payload ≤ 125 bytes and `fin` set.
pub fn encode_frame(
    dst: &mut BytesMut,
    fin: bool,
    opcode: OpCode,
    payload: &[u8],
    mask: Option<[u8; 4]>,
) {
    debug_assert!(!opcode.is_control() || (fin && payload.len() <= MAX_CONTROL_PAYLOAD));
    let mut header = [0; MAX_HEADER_LEN];
    let header_len = encode_header(&mut header, fin, opcode, payload.len(), mask);
    dst.reserve(header_len + payload.len());
    dst.extend_from_slice(&header[..header_len]);
    let start = dst.len();
    dst.extend_from_slice(payload);
    if let Some(key) = mask {
        apply_mask(&mut dst[start..], key);
    }
}

/// Appends a close frame. The reason is cut at a char boundary so the payload
/// stays within 125 bytes.
pub fn encode_close(dst: &mut BytesMut, code: u16, reason: &str, mask: Option<[u8; 4]>) {
    let reason = truncate_at_char_boundary(reason, MAX_CLOSE_REASON);
    let mut payload = [0; MAX_CONTROL_PAYLOAD];
    payload[..2].copy_from_slice(&code.to_be_bytes());
    payload[2..2 + reason.len()].copy_from_slice(reason.as_bytes());
    encode_frame(dst, true, OpCode::Close, &payload[..2 + reason.len()], mask);
}

fn truncate_at_char_boundary(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// Builds one unmasked, final server frame as a single [`Bytes`], header and
/// payload contiguous, with `write_payload` serializing straight into it.
///
/// This is the fan-out fast path: the frame is encoded once and the `Bytes`
/// cloned (a refcount bump) to every subscriber. To avoid copying the payload
/// behind a header whose size depends on the payload length, the buffer
/// starts with [`MAX_HEADER_LEN`] bytes of headroom; once the payload is in,
/// the header is written right-aligned into the headroom and the unused
/// prefix is split off.
///
/// `write_payload` must only append to the buffer it is given.
///
/// # Panics
/// If `write_payload` shrinks the buffer below its headroom (a caller bug).
pub fn server_frame_with(opcode: OpCode, write_payload: impl FnOnce(&mut BytesMut)) -> Bytes {
    server_frame_with_capacity(opcode, 256, write_payload)
}

/// [`server_frame_with`] with a payload size hint, to avoid regrowing the
/// buffer for payloads whose size is roughly known.
///
/// # Panics
/// If `write_payload` shrinks the buffer below its headroom (a caller bug).
pub fn server_frame_with_capacity(
    opcode: OpCode,
    payload_capacity: usize,
    write_payload: impl FnOnce(&mut BytesMut),
) -> Bytes {
    let mut buf = BytesMut::with_capacity(MAX_HEADER_LEN.saturating_add(payload_capacity));
    buf.put_bytes(0, MAX_HEADER_LEN);
    write_payload(&mut buf);
    assert!(
        buf.len() >= MAX_HEADER_LEN,
        "write_payload must only append to the frame buffer"
    );
    let payload_len = buf.len() - MAX_HEADER_LEN;
    let mut header = [0; MAX_HEADER_LEN];
    let header_len = encode_header(&mut header, true, opcode, payload_len, None);
    let start = MAX_HEADER_LEN - header_len;
    buf[start..MAX_HEADER_LEN].copy_from_slice(&header[..header_len]);
    buf.advance(start);
    buf.freeze()
}

/// One unmasked, final server frame carrying `payload`, as a single [`Bytes`].
pub fn server_frame(opcode: OpCode, payload: &[u8]) -> Bytes {
    let mut buf = BytesMut::new();
    encode_frame(&mut buf, true, opcode, payload, None);
    buf.freeze()
}

/// The payload of a complete, unmasked server frame made by this module
/// (e.g. a delivery's shared frame), or `None` if `frame` is not one.
pub fn server_frame_payload(frame: &[u8]) -> Option<&[u8]> {
    let b1 = *frame.get(1)?;
    if b1 & 0x80 != 0 {
        return None;
    }
    let (start, len): (usize, usize) = match b1 & 0x7f {
        126 => (
            4,
            u16::from_be_bytes(frame.get(2..4)?.try_into().ok()?) as usize,
        ),
        127 => (
            10,
            usize::try_from(u64::from_be_bytes(frame.get(2..10)?.try_into().ok()?)).ok()?,
        ),
        n => (2, n as usize),
    };
    frame.get(start..start.checked_add(len)?)
}

#[cfg(any(test, feature = "fuzzing"))]
mod chunks;
#[cfg(any(test, feature = "fuzzing"))]
pub(crate) use chunks::decode_chunks;

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn server_frame_payload_finds_the_payload() {
        for n in [0usize, 1, 125, 126, 127, 65_535, 65_536, 70_000] {
            let p = vec![b'x'; n];
            let f = server_frame(OpCode::Text, &p);
            assert_eq!(server_frame_payload(&f), Some(&p[..]));
            assert_eq!(server_frame_payload(&f[..f.len().saturating_sub(1)]), None);
        }
        assert_eq!(server_frame_payload(&[0x81]), None);
        assert_eq!(server_frame_payload(&[0x81, 0x85, 0, 0, 0, 0]), None);
    }

    const KEY: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];
    const BIG: usize = 1 << 20;

    /// A masked client→server frame, as a browser would send it.
    fn client(fin: bool, opcode: OpCode, payload: &[u8]) -> Vec<u8> {
        let mut buf = BytesMut::new();
        encode_frame(&mut buf, fin, opcode, payload, Some(KEY));
        buf.to_vec()
    }

    /// Length forms for hand-built frames, including non-minimal ones.
    #[derive(Debug, Clone, Copy)]
    enum Len {
        Minimal,
        Ext16,
        Ext64,
    }

    /// A frame with every header bit under the test's control.
    fn raw(b0: u8, mask: Option<[u8; 4]>, len: Len, payload: &[u8]) -> Vec<u8> {
        let mask_bit = if mask.is_some() { 0x80 } else { 0 };
        let mut out = vec![b0];
        match len {
            Len::Minimal if payload.len() < 126 => out.push(mask_bit | payload.len() as u8),
            Len::Minimal | Len::Ext16 if payload.len() <= 0xFFFF => {
                out.push(mask_bit | 126);
                out.extend_from_slice(&(payload.len() as u16).to_be_bytes());
            }
            _ => {
                out.push(mask_bit | 127);
                out.extend_from_slice(&(payload.len() as u64).to_be_bytes());
            }
        }
        let start = out.len();
        if let Some(key) = mask {
            out.extend_from_slice(&key);
        }
        let body = out.len();
        out.extend_from_slice(payload);
        if let Some(key) = mask {
            apply_mask_naive(&mut out[body..], key);
        }
        let _ = start;
        out
    }

    fn decode_one(bytes: &[u8]) -> Result<Option<Frame>, FrameError> {
        decode_frame(&mut BytesMut::from(bytes), Role::Server, BIG)
    }

    fn decode_all(bytes: &[u8], max: usize) -> (Vec<Message>, Result<(), FrameError>) {
        decode_chunked([bytes], max)
    }

    /// Feeds `bytes` to a fresh decoder in the given chunks.
    fn decode_chunked<'a>(
        chunks: impl IntoIterator<Item = &'a [u8]>,
        max: usize,
    ) -> (Vec<Message>, Result<(), FrameError>) {
        let (messages, err) = decode_chunks(Role::Server, max, chunks, false);
        (messages, err.map_or(Ok(()), Err))
    }

    fn text(s: &str) -> Message {
        Message::Text(Bytes::copy_from_slice(s.as_bytes()))
    }

    // ---- frame-level rules, one test per error variant ----

    #[test]
    fn decodes_rfc_example_frames() {
        // RFC 6455 §5.7: masked "Hello" from a client, unmasked from a server.
        let masked = [
            0x81, 0x85, 0x37, 0xfa, 0x21, 0x3d, 0x7f, 0x9f, 0x4d, 0x51, 0x58,
        ];
        let frame = decode_one(&masked).unwrap().unwrap();
        assert_eq!(
            frame,
            Frame {
                fin: true,
                opcode: OpCode::Text,
                payload: Bytes::from_static(b"Hello")
            }
        );
        let unmasked = [0x81, 0x05, 0x48, 0x65, 0x6c, 0x6c, 0x6f];
        let frame = decode_frame(&mut BytesMut::from(&unmasked[..]), Role::Client, BIG)
            .unwrap()
            .unwrap();
        assert_eq!(&frame.payload[..], b"Hello");
        // Fragmented unmasked text "Hel" + "lo".
        let mut buf = BytesMut::from(&[0x01, 0x03, 0x48, 0x65, 0x6c, 0x80, 0x02, 0x6c, 0x6f][..]);
        let first = decode_frame(&mut buf, Role::Client, BIG).unwrap().unwrap();
        assert!(!first.fin && first.opcode == OpCode::Text);
        let second = decode_frame(&mut buf, Role::Client, BIG).unwrap().unwrap();
        assert!(second.fin && second.opcode == OpCode::Continuation);
        assert!(buf.is_empty());
    }

    #[test]
    fn unmasked_frame_from_client() {
        let bytes = raw(0x81, None, Len::Minimal, b"hi");
        assert_eq!(
            decode_one(&bytes[..2]),
            Err(FrameError::UnmaskedFrameFromClient)
        );
        assert_eq!(decode_one(&bytes), Err(FrameError::UnmaskedFrameFromClient));
    }

    #[test]
    fn masked_frame_from_server() {
        let bytes = raw(0x81, Some(KEY), Len::Minimal, b"hi");
        let got = decode_frame(&mut BytesMut::from(&bytes[..]), Role::Client, BIG);
        assert_eq!(got, Err(FrameError::MaskedFrameFromServer));
    }

    #[test]
    fn reserved_bits_set() {
        for rsv in [0x40, 0x20, 0x10, 0x70] {
            let bytes = raw(0x80 | rsv | 0x1, Some(KEY), Len::Minimal, b"x");
            // Refused from the first two bytes already.
            assert_eq!(decode_one(&bytes[..2]), Err(FrameError::ReservedBitsSet));
            assert_eq!(decode_one(&bytes), Err(FrameError::ReservedBitsSet));
        }
    }

    #[test]
    fn unknown_opcode() {
        for op in (3..=7).chain(11..=15) {
            let bytes = raw(0x80 | op, Some(KEY), Len::Minimal, b"");
            assert_eq!(decode_one(&bytes[..2]), Err(FrameError::UnknownOpcode(op)));
        }
        for op in [0u8, 1, 2, 8, 9, 10] {
            assert_eq!(OpCode::from_u8(op).map(OpCode::as_u8), Some(op));
        }
    }

    #[test]
    fn fragmented_control_frame() {
        for op in [OpCode::Close, OpCode::Ping, OpCode::Pong] {
            let bytes = raw(op.as_u8(), Some(KEY), Len::Minimal, b"");
            assert_eq!(
                decode_one(&bytes[..2]),
                Err(FrameError::FragmentedControlFrame)
            );
        }
    }

    #[test]
    fn control_frame_too_long() {
        let payload = [b'a'; 126];
        for op in [OpCode::Close, OpCode::Ping, OpCode::Pong] {
            let bytes = raw(0x80 | op.as_u8(), Some(KEY), Len::Minimal, &payload);
            // Refused once the 16-bit length is readable, before the payload.
            assert_eq!(decode_one(&bytes[..3]), Ok(None));
            assert_eq!(
                decode_one(&bytes[..4]),
                Err(FrameError::ControlFrameTooLong(126))
            );
        }
        // 125 bytes is the maximum and fine, even non-minimally encoded.
        let bytes = raw(0x89, Some(KEY), Len::Ext64, &payload[..125]);
        assert_eq!(decode_one(&bytes).unwrap().unwrap().payload.len(), 125);
    }

    #[test]
    fn payload_length_msb_set() {
        let mut bytes = vec![0x82, 0xFF];
        bytes.extend_from_slice(&(1u64 << 63 | 5).to_be_bytes());
        assert_eq!(decode_one(&bytes[..9]), Ok(None));
        assert_eq!(decode_one(&bytes), Err(FrameError::PayloadLengthMsbSet));
        // Largest legal length: refused by the size limit instead.
        let mut bytes = vec![0x82, 0xFF];
        bytes.extend_from_slice(&(u64::MAX >> 1).to_be_bytes());
        bytes.extend_from_slice(&KEY);
        assert_eq!(
            decode_one(&bytes),
            Err(FrameError::MessageTooBig { limit: BIG })
        );
    }

    #[test]
    fn frame_too_big_is_refused_from_the_header() {
        let bytes = client(true, OpCode::Binary, &[0; 200]);
        let header_only = &bytes[..8];
        let got = decode_frame(&mut BytesMut::from(header_only), Role::Server, 199);
        assert_eq!(got, Err(FrameError::MessageTooBig { limit: 199 }));
        let got = decode_frame(&mut BytesMut::from(&bytes[..]), Role::Server, 200);
        assert_eq!(got.unwrap().unwrap().payload.len(), 200);
    }

    #[test]
    fn need_more_consumes_nothing() {
        let bytes = client(true, OpCode::Binary, &[7; 300]);
        for cut in 0..bytes.len() {
            let mut buf = BytesMut::from(&bytes[..cut]);
            assert_eq!(
                decode_frame(&mut buf, Role::Server, BIG),
                Ok(None),
                "cut {cut}"
            );
            assert_eq!(&buf[..], &bytes[..cut]);
        }
        let mut buf = BytesMut::from(&bytes[..]);
        buf.extend_from_slice(b"next");
        let frame = decode_frame(&mut buf, Role::Server, BIG).unwrap().unwrap();
        assert_eq!(&frame.payload[..], &[7; 300][..]);
        assert_eq!(&buf[..], b"next");
    }

    #[test]
    fn non_minimal_lengths_are_accepted() {
        for len in [Len::Minimal, Len::Ext16, Len::Ext64] {
            let bytes = raw(0x82, Some(KEY), len, b"hello");
            let frame = decode_one(&bytes).unwrap().unwrap();
            assert_eq!(&frame.payload[..], b"hello", "{len:?}");
        }
    }

    // ---- message-level rules ----

    #[test]
    fn invalid_utf8() {
        let bad = [b'a', 0xC3, 0x28];
        let (msgs, end) = decode_all(&client(true, OpCode::Text, &bad), BIG);
        assert!(msgs.is_empty());
        assert_eq!(end, Err(FrameError::InvalidUtf8));
        // The same bytes are fine as binary.
        let (msgs, end) = decode_all(&client(true, OpCode::Binary, &bad), BIG);
        assert_eq!((msgs.len(), end), (1, Ok(())));
        // Close reason.
        let (_, end) = decode_all(&client(true, OpCode::Close, &[0x03, 0xE8, 0xFF]), BIG);
        assert_eq!(end, Err(FrameError::InvalidUtf8));
        assert_eq!(FrameError::InvalidUtf8.close_code(), 1007);
    }

    #[test]
    fn utf8_split_across_fragments_is_valid() {
        let s = "κόσμε€😀";
        let bytes = s.as_bytes();
        for cut in 0..=bytes.len() {
            let mut wire = client(false, OpCode::Text, &bytes[..cut]);
            wire.extend(client(true, OpCode::Continuation, &bytes[cut..]));
            assert_eq!(decode_all(&wire, BIG), (vec![text(s)], Ok(())), "cut {cut}");
        }
    }

    #[test]
    fn invalid_utf8_fails_on_the_first_bad_fragment() {
        // Autobahn 6.4.1: fragment 2 is U+110000 in UTF-8 form; fragment 3
        // has not even arrived when the message must be refused.
        let mut wire = client(false, OpCode::Text, "κόσμε".as_bytes());
        wire.extend(client(
            false,
            OpCode::Continuation,
            &[0xF4, 0x90, 0x80, 0x80],
        ));
        let mut dec = MessageDecoder::new(Role::Server, BIG);
        let mut buf = BytesMut::from(&wire[..]);
        assert_eq!(dec.decode(&mut buf), Err(FrameError::InvalidUtf8));
        // A first fragment that cannot start valid UTF-8 is refused alone.
        let wire = client(false, OpCode::Text, &[0xFF]);
        assert_eq!(
            decode_all(&wire, BIG),
            (vec![], Err(FrameError::InvalidUtf8))
        );
        // A dead prefix split over two fragments: ED | A0 (surrogate).
        let mut wire = client(false, OpCode::Text, &[b'a', 0xED]);
        wire.extend(client(false, OpCode::Continuation, &[0xA0]));
        assert_eq!(
            decode_all(&wire, BIG),
            (vec![], Err(FrameError::InvalidUtf8))
        );
    }

    #[test]
    fn utf8_truncated_at_fin_fails() {
        let mut wire = client(false, OpCode::Text, b"ab");
        wire.extend(client(true, OpCode::Continuation, &[0xE2, 0x82]));
        assert_eq!(
            decode_all(&wire, BIG),
            (vec![], Err(FrameError::InvalidUtf8))
        );
        let wire = client(true, OpCode::Text, &[0xF0, 0x9F, 0x98]);
        assert_eq!(
            decode_all(&wire, BIG),
            (vec![], Err(FrameError::InvalidUtf8))
        );
    }

    /// Autobahn 6.4.3's payload: "κόσμε" then U+110000 (F4 90 80 80), dead
    /// after its second byte.
    const AUTOBAHN_6_4_3: [u8; 13] = [
        0xCE, 0xBA, 0xE1, 0xBD, 0xB9, 0xCE, 0xBC, 0xCE, 0xB5, 0xF4, 0x90, 0x80, 0x80,
    ];

    /// The first `received` bytes of a masked text frame announcing
    /// `payload` followed by `announced - payload.len()` more bytes.
    fn partial_text(opcode: OpCode, fin: bool, payload: &[u8], announced: usize) -> Vec<u8> {
        let mut body = payload.to_vec();
        body.resize(announced, b'x');
        let mut wire = client(fin, opcode, &body);
        wire.truncate(wire.len() - (announced - payload.len()));
        wire
    }

    #[test]
    fn invalid_utf8_in_a_partial_text_frame_fails_before_the_rest_arrives() {
        // 64 KiB announced, only the 13 bytes of 6.4.3 sent: refused now.
        let wire = partial_text(OpCode::Text, true, &AUTOBAHN_6_4_3, 64 * 1024);
        let mut dec = MessageDecoder::new(Role::Server, BIG);
        let mut buf = BytesMut::from(&wire[..]);
        assert_eq!(dec.decode(&mut buf), Err(FrameError::InvalidUtf8));
        // Byte by byte: fine up to F4, refused on the 0x90 after it.
        let mut dec = MessageDecoder::new(Role::Server, BIG);
        let mut buf = BytesMut::new();
        let header_len = wire.len() - AUTOBAHN_6_4_3.len();
        buf.extend_from_slice(&wire[..header_len]);
        assert_eq!(dec.decode(&mut buf), Ok(None));
        for (i, &b) in wire[header_len..].iter().enumerate() {
            buf.extend_from_slice(&[b]);
            let expected = if i < 10 {
                Ok(None)
            } else {
                Err(FrameError::InvalidUtf8)
            };
            assert_eq!(dec.decode(&mut buf), expected, "byte {i}");
            if i >= 10 {
                break;
            }
        }
        // Autobahn 6.4.4: the same, the first frame of a fragmented message.
        let wire = partial_text(OpCode::Text, false, &AUTOBAHN_6_4_3, 1000);
        assert_eq!(
            decode_all(&wire, BIG),
            (vec![], Err(FrameError::InvalidUtf8))
        );
        // Binary frames are not text: the same bytes just wait.
        let mut wire = partial_text(OpCode::Text, true, &AUTOBAHN_6_4_3, 1000);
        wire[0] = 0x82;
        assert_eq!(decode_all(&wire, BIG), (vec![], Ok(())));
    }

    #[test]
    fn partial_continuation_of_a_text_message_fails_fast() {
        // First fragment complete and valid, a ping in between, then a
        // continuation whose received part is dead: refused before its end.
        let mut wire = client(false, OpCode::Text, "κόσμε".as_bytes());
        wire.extend(client(true, OpCode::Ping, b"p"));
        wire.extend(partial_text(
            OpCode::Continuation,
            true,
            &[b'a', 0xF4, 0x90],
            500,
        ));
        assert_eq!(
            decode_all(&wire, BIG),
            (
                vec![Message::Ping(Bytes::from_static(b"p"))],
                Err(FrameError::InvalidUtf8)
            )
        );
        // A code point split between the fragments, completed badly in the
        // continuation's first bytes: E2 | 28.
        let mut wire = client(false, OpCode::Text, &[b'a', 0xE2]);
        wire.extend(partial_text(OpCode::Continuation, true, &[0x28], 500));
        assert_eq!(
            decode_all(&wire, BIG),
            (vec![], Err(FrameError::InvalidUtf8))
        );
        // The same prefixes in a binary message are not checked.
        let mut wire = client(false, OpCode::Binary, &[b'a', 0xE2]);
        wire.extend(partial_text(OpCode::Continuation, true, &[0x28], 500));
        assert_eq!(decode_all(&wire, BIG), (vec![], Ok(())));
    }

    #[test]
    fn valid_partial_prefix_ending_mid_code_point_waits() {
        // "κόσμε😀…" cut inside the emoji, at every mask phase: no error, and
        // once the rest arrives the message is intact (unmasked once).
        let s = "κόσμε😀 snow ☃ ".repeat(40);
        let bytes = s.as_bytes();
        let emoji = s.find('😀').unwrap_or_default();
        for cut in (emoji + 1..emoji + 4).chain([1, 2, 3, 5, 7, 100, 301]) {
            for (fin, opcode) in [(true, OpCode::Text), (false, OpCode::Text)] {
                let mut wire = client(fin, opcode, bytes);
                if !fin {
                    wire.extend(client(true, OpCode::Continuation, b"!"));
                }
                let header_len = wire.len() - bytes.len() - if fin { 0 } else { 7 };
                let mut dec = MessageDecoder::new(Role::Server, BIG);
                let mut buf = BytesMut::from(&wire[..header_len + cut]);
                assert_eq!(dec.decode(&mut buf), Ok(None), "cut {cut}");
                // A second look with nothing new changes nothing.
                assert_eq!(dec.decode(&mut buf), Ok(None), "cut {cut}");
                // The rest in two more pieces.
                let mid = header_len + cut + (wire.len() - header_len - cut) / 2;
                buf.extend_from_slice(&wire[header_len + cut..mid]);
                let first = dec.decode(&mut buf);
                buf.extend_from_slice(&wire[mid..]);
                let mut out: Vec<Message> = first.unwrap().into_iter().collect();
                while let Some(m) = dec.decode(&mut buf).unwrap() {
                    out.push(m);
                }
                let expected = if fin { s.clone() } else { format!("{s}!") };
                assert_eq!(out, vec![text(&expected)], "cut {cut} fin {fin}");
                assert!(dec.is_idle() && buf.is_empty());
            }
        }
        // A fragmented text message whose continuation arrives in pieces,
        // each ending mid-code point.
        let (a, b) = "€€€€".as_bytes().split_at(4);
        let mut wire = client(false, OpCode::Text, a);
        wire.extend(client(true, OpCode::Continuation, b));
        let chunks: Vec<&[u8]> = wire.chunks(1).collect();
        assert_eq!(decode_chunked(chunks, BIG), (vec![text("€€€€")], Ok(())));
    }

    #[test]
    fn message_too_big() {
        // Single frame: refused from its header alone.
        let wire = client(true, OpCode::Text, &[b'a'; 101]);
        let (_, end) = decode_all(&wire[..8], 100);
        assert_eq!(end, Err(FrameError::MessageTooBig { limit: 100 }));
        assert_eq!(
            decode_all(&client(true, OpCode::Text, &[b'a'; 100]), 100)
                .0
                .len(),
            1
        );
        // Fragmented: the continuation header that would cross the limit.
        let mut wire = client(false, OpCode::Binary, &[0; 60]);
        wire.extend(client(false, OpCode::Continuation, &[0; 40]));
        let ok_len = wire.len();
        wire.extend(client(true, OpCode::Continuation, &[0; 1]));
        let (msgs, end) = decode_all(&wire[..ok_len + 6], 100);
        assert!(msgs.is_empty());
        assert_eq!(end, Err(FrameError::MessageTooBig { limit: 100 }));
        // Exactly at the limit is fine; control frames are not counted.
        let mut wire = client(false, OpCode::Binary, &[0; 60]);
        wire.extend(client(true, OpCode::Ping, &[0; 125]));
        wire.extend(client(true, OpCode::Continuation, &[0; 40]));
        let (msgs, end) = decode_all(&wire, 100);
        assert_eq!(end, Ok(()));
        assert_eq!(
            msgs,
            vec![
                Message::Ping(Bytes::from(vec![0; 125])),
                Message::Binary(Bytes::from(vec![0; 100]))
            ]
        );
        assert_eq!(FrameError::MessageTooBig { limit: 1 }.close_code(), 1009);
    }

    #[test]
    fn close_frame_too_short() {
        let (_, end) = decode_all(&client(true, OpCode::Close, &[0x03]), BIG);
        assert_eq!(end, Err(FrameError::CloseFrameTooShort));
    }

    #[test]
    fn close_frames() {
        let (msgs, end) = decode_all(&client(true, OpCode::Close, b""), BIG);
        assert_eq!((msgs, end), (vec![Message::Close(None)], Ok(())));
        let mut payload = 1001u16.to_be_bytes().to_vec();
        payload.extend_from_slice("bye ✓".as_bytes());
        let (msgs, _) = decode_all(&client(true, OpCode::Close, &payload), BIG);
        let Message::Close(Some(close)) = &msgs[0] else {
            panic!("{msgs:?}")
        };
        assert_eq!((close.code, close.reason_str()), (1001, "bye ✓"));
    }

    #[test]
    fn close_code_table() {
        let valid: [u16; 16] = [
            1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012, 1013, 1014, 3000, 3999,
            4000, 4999,
        ];
        // Autobahn 7.9.x plus the other reserved and out-of-range codes.
        let invalid: [u16; 13] = [
            0, 1, 999, 1004, 1005, 1006, 1015, 1016, 1100, 2000, 2999, 5000, 65535,
        ];
        for code in valid {
            let (msgs, end) = decode_all(&client(true, OpCode::Close, &code.to_be_bytes()), BIG);
            assert_eq!(end, Ok(()), "{code}");
            assert_eq!(
                msgs,
                vec![Message::Close(Some(CloseFrame {
                    code,
                    reason: Bytes::new()
                }))]
            );
        }
        for code in invalid {
            let (_, end) = decode_all(&client(true, OpCode::Close, &code.to_be_bytes()), BIG);
            assert_eq!(end, Err(FrameError::InvalidCloseCode(code)), "{code}");
        }
        for code in 0..=u16::MAX {
            let expected = valid.contains(&code) || (3000..=4999).contains(&code);
            assert_eq!(is_valid_close_code(code), expected, "{code}");
        }
    }

    #[test]
    fn unexpected_continuation() {
        let (_, end) = decode_all(&client(true, OpCode::Continuation, b"x"), BIG);
        assert_eq!(end, Err(FrameError::UnexpectedContinuation));
        // Refused from the header alone.
        let wire = client(false, OpCode::Continuation, &[0; 50]);
        assert_eq!(
            decode_all(&wire[..6], BIG).1,
            Err(FrameError::UnexpectedContinuation)
        );
    }

    #[test]
    fn expected_continuation() {
        let mut wire = client(false, OpCode::Text, b"a");
        wire.extend(client(true, OpCode::Binary, b"b"));
        assert_eq!(
            decode_all(&wire, BIG),
            (vec![], Err(FrameError::ExpectedContinuation))
        );
        let mut wire = client(false, OpCode::Binary, b"a");
        wire.extend(client(true, OpCode::Text, b"b"));
        assert_eq!(
            decode_all(&wire, BIG).1,
            Err(FrameError::ExpectedContinuation)
        );
    }

    #[test]
    fn protocol_errors_close_with_1002() {
        for e in [
            FrameError::UnmaskedFrameFromClient,
            FrameError::ReservedBitsSet,
            FrameError::UnknownOpcode(3),
            FrameError::InvalidCloseCode(1005),
            FrameError::ExpectedContinuation,
        ] {
            assert_eq!(e.close_code(), 1002);
        }
    }

    #[test]
    fn control_frames_interleaved_in_a_fragmented_message() {
        let mut wire = client(false, OpCode::Text, "Hé".as_bytes());
        wire.extend(client(true, OpCode::Ping, b"p1"));
        wire.extend(client(false, OpCode::Continuation, &[]));
        wire.extend(client(true, OpCode::Pong, b""));
        wire.extend(client(true, OpCode::Ping, b"p2"));
        wire.extend(client(true, OpCode::Continuation, "llo".as_bytes()));
        let mut dec = MessageDecoder::new(Role::Server, BIG);
        let mut buf = BytesMut::from(&wire[..]);
        assert_eq!(
            dec.decode(&mut buf),
            Ok(Some(Message::Ping(Bytes::from_static(b"p1"))))
        );
        assert!(!dec.is_idle());
        assert_eq!(dec.decode(&mut buf), Ok(Some(Message::Pong(Bytes::new()))));
        assert_eq!(
            dec.decode(&mut buf),
            Ok(Some(Message::Ping(Bytes::from_static(b"p2"))))
        );
        assert_eq!(dec.decode(&mut buf), Ok(Some(text("Héllo"))));
        assert!(dec.is_idle());
        assert_eq!(dec.decode(&mut buf), Ok(None));
    }

    #[test]
    fn client_role_decodes_server_frames() {
        let mut wire = BytesMut::new();
        wire.extend_from_slice(&server_frame(OpCode::Text, "héllo".as_bytes()));
        encode_frame(&mut wire, false, OpCode::Binary, b"ab", None);
        wire.extend_from_slice(&server_frame(OpCode::Ping, b""));
        encode_frame(&mut wire, true, OpCode::Continuation, b"cd", None);
        encode_close(&mut wire, 1001, "going away", None);
        let mut dec = MessageDecoder::new(Role::Client, BIG);
        let mut got = Vec::new();
        while let Some(m) = dec.decode(&mut wire).unwrap() {
            got.push(m);
        }
        assert_eq!(
            got,
            vec![
                text("héllo"),
                Message::Ping(Bytes::new()),
                Message::Binary(Bytes::from_static(b"abcd")),
                Message::Close(Some(CloseFrame {
                    code: 1001,
                    reason: Bytes::from_static(b"going away")
                })),
            ]
        );
        // A masked frame is a protocol error for a client.
        let mut wire = BytesMut::from(&client(true, OpCode::Text, b"x")[..]);
        assert_eq!(
            dec.decode(&mut wire),
            Err(FrameError::MaskedFrameFromServer)
        );
    }

    #[test]
    fn reset_drops_the_partial_message() {
        let mut dec = MessageDecoder::new(Role::Server, BIG);
        let mut buf = BytesMut::from(&client(false, OpCode::Text, b"abc")[..]);
        assert_eq!(dec.decode(&mut buf), Ok(None));
        assert!(!dec.is_idle());
        dec.reset();
        assert!(dec.is_idle());
        buf.extend(client(true, OpCode::Continuation, b"d"));
        assert_eq!(
            dec.decode(&mut buf),
            Err(FrameError::UnexpectedContinuation)
        );
    }

    #[test]
    fn single_frame_messages_are_zero_copy() {
        let mut wire = client(true, OpCode::Binary, &[1; 1000]);
        wire.extend(client(true, OpCode::Text, b"hello"));
        wire.extend(client(false, OpCode::Binary, b"frag"));
        wire.extend(client(true, OpCode::Continuation, b"ment"));
        let mut buf = BytesMut::from(&wire[..]);
        let range = buf.as_ptr_range();
        let inside = |b: &Bytes| range.contains(&b.as_ptr());
        let mut dec = MessageDecoder::new(Role::Server, BIG);
        let Ok(Some(Message::Binary(a))) = dec.decode(&mut buf) else {
            panic!()
        };
        let Ok(Some(Message::Text(b))) = dec.decode(&mut buf) else {
            panic!()
        };
        let Ok(Some(Message::Binary(c))) = dec.decode(&mut buf) else {
            panic!()
        };
        assert!(
            inside(&a) && inside(&b),
            "single-frame payloads must alias the read buffer"
        );
        assert!(!inside(&c), "fragmented messages are accumulated");
        assert_eq!(&c[..], b"fragment");
    }

    /// A stream exercising every length form, fragmentation, interleaving
    /// and multi-byte text split across fragments. `huge` adds a message
    /// whose fragment needs the 64-bit length form.
    fn sample_stream(huge: bool) -> (Vec<u8>, Vec<Message>) {
        let s = "snow ☃ and 😀";
        let (a, b) = s.as_bytes().split_at(7); // inside the snowman
        let long: Vec<u8> = (0..300u32).map(|i| i as u8).collect();
        let mut wire = client(true, OpCode::Text, s.as_bytes());
        wire.extend(client(false, OpCode::Text, a));
        wire.extend(client(true, OpCode::Ping, b"ping"));
        wire.extend(client(true, OpCode::Continuation, b));
        wire.extend(client(true, OpCode::Binary, &long));
        let mut expected = vec![
            text(s),
            Message::Ping(Bytes::from_static(b"ping")),
            text(s),
            Message::Binary(Bytes::from(long)),
        ];
        if huge {
            let huge: Vec<u8> = (0..70_000u32).map(|i| (i % 251) as u8).collect();
            wire.extend(client(false, OpCode::Binary, &huge[..66_000]));
            wire.extend(client(true, OpCode::Pong, b""));
            wire.extend(client(true, OpCode::Continuation, &huge[66_000..]));
            expected.push(Message::Pong(Bytes::new()));
            expected.push(Message::Binary(Bytes::from(huge)));
        }
        wire.extend(raw(0x82, Some(KEY), Len::Ext64, b"non-minimal"));
        let mut close = 1000u16.to_be_bytes().to_vec();
        close.extend_from_slice(b"done");
        wire.extend(client(true, OpCode::Close, &close));
        expected.push(Message::Binary(Bytes::from_static(b"non-minimal")));
        expected.push(Message::Close(Some(CloseFrame {
            code: 1000,
            reason: Bytes::from_static(b"done"),
        })));
        (wire, expected)
    }

    #[test]
    fn split_at_every_byte_boundary_decodes_identically() {
        let (wire, expected) = sample_stream(false);
        assert_eq!(decode_all(&wire, BIG), (expected.clone(), Ok(())));
        for cut in 0..=wire.len() {
            let (a, b) = wire.split_at(cut);
            assert_eq!(
                decode_chunked([a, b], BIG),
                (expected.clone(), Ok(())),
                "cut {cut}"
            );
        }
        // With the 64-bit-length fragment: every cut around its header, a
        // sample elsewhere (every cut would be quadratic in 70 KB).
        let (wire, expected) = sample_stream(true);
        let mut starts = vec![0];
        let mut buf = BytesMut::from(&wire[..]);
        while decode_frame(&mut buf, Role::Server, BIG).unwrap().is_some() {
            starts.push(wire.len() - buf.len());
        }
        let around_headers = starts
            .iter()
            .flat_map(|&s| s.saturating_sub(20)..(s + 20).min(wire.len()));
        for cut in around_headers.chain((0..wire.len()).step_by(997)) {
            let (a, b) = wire.split_at(cut);
            assert_eq!(
                decode_chunked([a, b], BIG),
                (expected.clone(), Ok(())),
                "cut {cut}"
            );
        }
    }

    #[test]
    fn byte_by_byte_decodes_identically() {
        let (wire, expected) = sample_stream(true);
        assert_eq!(decode_chunked(wire.chunks(1), BIG), (expected, Ok(())));
    }

    #[test]
    fn frames_split_at_every_byte_boundary() {
        let mut wire = client(true, OpCode::Binary, &[9; 130]);
        wire.extend(client(false, OpCode::Text, b"ab"));
        let whole = {
            let mut buf = BytesMut::from(&wire[..]);
            let mut v = Vec::new();
            while let Some(f) = decode_frame(&mut buf, Role::Server, BIG).unwrap() {
                v.push(f);
            }
            v
        };
        assert_eq!(whole.len(), 2);
        for cut in 0..=wire.len() {
            let mut buf = BytesMut::from(&wire[..cut]);
            let mut got = Vec::new();
            while let Some(f) = decode_frame(&mut buf, Role::Server, BIG).unwrap() {
                got.push(f);
            }
            buf.extend_from_slice(&wire[cut..]);
            while let Some(f) = decode_frame(&mut buf, Role::Server, BIG).unwrap() {
                got.push(f);
            }
            assert_eq!(got, whole, "cut {cut}");
        }
    }

    // ---- encoding ----

    #[test]
    fn header_layouts() {
        let mut h = [0; MAX_HEADER_LEN];
        assert_eq!(encode_header(&mut h, true, OpCode::Text, 0, None), 2);
        assert_eq!(&h[..2], &[0x81, 0x00]);
        assert_eq!(encode_header(&mut h, false, OpCode::Binary, 125, None), 2);
        assert_eq!(&h[..2], &[0x02, 125]);
        assert_eq!(encode_header(&mut h, true, OpCode::Binary, 126, None), 4);
        assert_eq!(&h[..4], &[0x82, 126, 0, 126]);
        assert_eq!(encode_header(&mut h, true, OpCode::Binary, 65535, None), 4);
        assert_eq!(&h[..4], &[0x82, 126, 0xFF, 0xFF]);
        assert_eq!(encode_header(&mut h, true, OpCode::Binary, 65536, None), 10);
        assert_eq!(&h[..10], &[0x82, 127, 0, 0, 0, 0, 0, 1, 0, 0]);
        assert_eq!(
            encode_header(&mut h, true, OpCode::Ping, 70000, Some(KEY)),
            14
        );
        assert_eq!(&h[..2], &[0x89, 0xFF]);
        assert_eq!(&h[10..14], &KEY);
        assert_eq!(encode_header(&mut h, true, OpCode::Close, 3, Some(KEY)), 6);
        assert_eq!(&h[..6], &[0x88, 0x83, 0x37, 0xfa, 0x21, 0x3d]);
    }

    #[test]
    fn encode_frame_masks_for_clients() {
        let mut buf = BytesMut::new();
        encode_frame(&mut buf, true, OpCode::Text, b"Hello", Some(KEY));
        assert_eq!(
            &buf[..],
            &[
                0x81, 0x85, 0x37, 0xfa, 0x21, 0x3d, 0x7f, 0x9f, 0x4d, 0x51, 0x58
            ]
        );
        let mut buf = BytesMut::new();
        encode_frame(&mut buf, true, OpCode::Text, b"Hello", None);
        assert_eq!(&buf[..], b"\x81\x05Hello");
    }

    #[test]
    fn encode_close_truncates_at_a_char_boundary() {
        let reason = "é".repeat(100); // 200 bytes
        let mut buf = BytesMut::new();
        encode_close(&mut buf, 1001, &reason, None);
        let frame = decode_frame(&mut buf, Role::Client, BIG).unwrap().unwrap();
        // 123 bytes would split an 'é', so 122 bytes of reason are kept.
        assert_eq!(frame.payload.len(), 124);
        let close = parse_close(frame.payload).unwrap().unwrap();
        assert_eq!(close.code, 1001);
        assert_eq!(close.reason_str(), "é".repeat(61));

        let mut buf = BytesMut::new();
        encode_close(&mut buf, 1000, &"a".repeat(500), Some(KEY));
        let frame = decode_frame(&mut buf, Role::Server, BIG).unwrap().unwrap();
        assert_eq!(frame.payload.len(), MAX_CONTROL_PAYLOAD);

        let mut buf = BytesMut::new();
        encode_close(&mut buf, 4000, "", None);
        assert_eq!(&buf[..], &[0x88, 0x02, 0x0F, 0xA0]);
    }

    #[test]
    fn server_frame_with_matches_server_frame() {
        for len in [0, 1, 125, 126, 1000, 65535, 65536, 100_000] {
            let payload: Vec<u8> = (0..len).map(|i| (i % 253) as u8).collect();
            let direct = server_frame(OpCode::Binary, &payload);
            let built = server_frame_with(OpCode::Binary, |buf| buf.extend_from_slice(&payload));
            assert_eq!(direct, built, "len {len}");
            let mut buf = BytesMut::from(&built[..]);
            let frame = decode_frame(&mut buf, Role::Client, usize::MAX)
                .unwrap()
                .unwrap();
            assert_eq!(frame.payload, payload);
            assert!(buf.is_empty());
        }
    }

    #[test]
    fn server_frame_with_writes_in_place() {
        let frame = server_frame_with_capacity(OpCode::Text, 64, |buf| {
            buf.extend_from_slice(b"{\"n\":");
            buf.extend_from_slice(b"42}");
        });
        assert_eq!(&frame[..], b"\x81\x08{\"n\":42}");
    }

    #[test]
    #[should_panic(expected = "only append")]
    fn server_frame_with_rejects_a_shrinking_writer() {
        let _ = server_frame_with(OpCode::Text, |buf| buf.clear());
    }

    // ---- property tests ----

    fn any_opcode() -> impl Strategy<Value = OpCode> {
        prop::sample::select(OpCode::ALL.to_vec())
    }

    /// Frames that are valid on their own; payload sizes straddle the 7-bit
    /// and 16-bit length forms.
    fn any_frame() -> impl Strategy<Value = Frame> {
        (
            any::<bool>(),
            any_opcode(),
            prop_oneof![0usize..130, 65530usize..65542],
        )
            .prop_flat_map(|(fin, opcode, len)| {
                let len = if opcode.is_control() {
                    len.min(MAX_CONTROL_PAYLOAD)
                } else {
                    len
                };
                (
                    Just(fin || opcode.is_control()),
                    Just(opcode),
                    proptest::collection::vec(any::<u8>(), len),
                )
            })
            .prop_map(|(fin, opcode, payload)| Frame {
                fin,
                opcode,
                payload: Bytes::from(payload),
            })
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

        #[test]
        fn frame_round_trip(frame in any_frame(), mask in proptest::option::of(any::<[u8; 4]>())) {
            let mut buf = BytesMut::new();
            encode_frame(&mut buf, frame.fin, frame.opcode, &frame.payload, mask);
            let role = if mask.is_some() { Role::Server } else { Role::Client };
            let decoded = decode_frame(&mut buf, role, BIG).unwrap().unwrap();
            prop_assert_eq!(decoded, frame);
            prop_assert!(buf.is_empty());
        }

        #[test]
        fn server_frame_round_trip(opcode in any_opcode(), payload in proptest::collection::vec(any::<u8>(), 0..125)) {
            let bytes = server_frame(opcode, &payload);
            let built = server_frame_with(opcode, |b| b.extend_from_slice(&payload));
            prop_assert_eq!(&bytes, &built);
            let decoded = decode_frame(&mut BytesMut::from(&bytes[..]), Role::Client, BIG).unwrap().unwrap();
            prop_assert_eq!(decoded, Frame { fin: true, opcode, payload: Bytes::from(payload) });
        }
    }

    /// A message plus how to put it on the wire: fragment sizes and control
    /// frames to interleave.
    #[derive(Debug, Clone)]
    struct Plan {
        message: Message,
        cuts: Vec<prop::sample::Index>,
        interleave: Vec<Message>,
    }

    fn control_message() -> impl Strategy<Value = Message> {
        let small = || proptest::collection::vec(any::<u8>(), 0..20).prop_map(Bytes::from);
        prop_oneof![
            small().prop_map(Message::Ping),
            small().prop_map(Message::Pong)
        ]
    }

    fn plan() -> impl Strategy<Value = Plan> {
        let data = prop_oneof![
            ".{0,40}".prop_map(|s: String| Message::Text(Bytes::from(s))),
            proptest::collection::vec(any::<u8>(), 0..300)
                .prop_map(|v| Message::Binary(Bytes::from(v))),
            control_message(),
        ];
        (
            data,
            proptest::collection::vec(any::<prop::sample::Index>(), 0..4),
            proptest::collection::vec(control_message(), 0..3),
        )
            .prop_map(|(message, cuts, interleave)| Plan {
                message,
                cuts,
                interleave,
            })
    }

    fn emit(plan: &Plan, wire: &mut BytesMut, mask: [u8; 4], expected: &mut Vec<Message>) {
        let (opcode, payload) = match &plan.message {
            Message::Text(p) => (OpCode::Text, p),
            Message::Binary(p) => (OpCode::Binary, p),
            Message::Ping(p) => (OpCode::Ping, p),
            Message::Pong(p) => (OpCode::Pong, p),
            Message::Close(_) => unreachable!(),
        };
        if opcode.is_control() {
            encode_frame(wire, true, opcode, payload, Some(mask));
            expected.push(plan.message.clone());
            return;
        }
        let mut cuts: Vec<usize> = plan
            .cuts
            .iter()
            .map(|c| c.index(payload.len() + 1))
            .collect();
        cuts.sort_unstable();
        cuts.push(payload.len());
        let mut from = 0;
        let mut controls = plan.interleave.iter();
        for (i, &cut) in cuts.iter().enumerate() {
            let last = i + 1 == cuts.len();
            let op = if i == 0 { opcode } else { OpCode::Continuation };
            encode_frame(wire, last, op, &payload[from..cut], Some(mask));
            from = cut;
            if !last {
                if let Some(control) = controls.next() {
                    emit(
                        &Plan {
                            message: control.clone(),
                            cuts: vec![],
                            interleave: vec![],
                        },
                        wire,
                        mask,
                        expected,
                    );
                }
            }
        }
        expected.push(plan.message.clone());
    }

    proptest! {
        /// Arbitrary messages, fragmented arbitrarily with control frames in
        /// between, fed in arbitrary chunks, come out as sent.
        #[test]
        fn message_round_trip(
            plans in proptest::collection::vec(plan(), 0..8),
            mask in any::<[u8; 4]>(),
            chunk_cuts in proptest::collection::vec(any::<prop::sample::Index>(), 0..8),
        ) {
            let mut wire = BytesMut::new();
            let mut expected = Vec::new();
            for plan in &plans {
                emit(plan, &mut wire, mask, &mut expected);
            }
            let mut cuts: Vec<usize> = chunk_cuts.iter().map(|c| c.index(wire.len() + 1)).collect();
            cuts.sort_unstable();
            cuts.push(wire.len());
            let mut from = 0;
            let mut chunks = Vec::new();
            for cut in cuts {
                chunks.push(&wire[from..cut]);
                from = cut;
            }
            prop_assert_eq!(decode_chunked(chunks, BIG), (expected, Ok(())));
        }
    }

    // ---- differential tests against tungstenite ----

    /// Bytes that are mostly one plausible frame with random defects, or noise.
    fn frame_bytes() -> impl Strategy<Value = Vec<u8>> {
        let structured = (
            any::<bool>(),
            prop_oneof![8 => Just(0u8), 1 => 1u8..8],
            0u8..16,
            prop_oneof![8 => Just(true), 1 => Just(false)],
            prop::sample::select(vec![Len::Minimal, Len::Ext16, Len::Ext64]),
            any::<[u8; 4]>(),
            prop_oneof![0usize..140, 60_000usize..70_000],
            any::<prop::sample::Index>(),
            any::<bool>(),
            prop_oneof![4 => Just(0u64), 1 => any::<u64>()],
        )
            .prop_map(
                |(fin, rsv, op, masked, len, key, n, cut, truncate, junk_len)| {
                    let payload: Vec<u8> = (0..n).map(|i| (i * 7) as u8).collect();
                    let b0 = if fin { 0x80 } else { 0 } | rsv << 4 | op;
                    let mut bytes = raw(b0, masked.then_some(key), len, &payload);
                    if junk_len != 0 && bytes[1] & 0x7F == 127 {
                        // Replace the 64-bit length with arbitrary bits.
                        bytes[2..10].copy_from_slice(&junk_len.to_be_bytes());
                    }
                    if truncate {
                        let keep = cut.index(bytes.len() + 1);
                        bytes.truncate(keep);
                    }
                    bytes
                },
            );
        prop_oneof![
            6 => structured,
            1 => proptest::collection::vec(any::<u8>(), 0..32),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 2048, ..ProptestConfig::default() })]

        /// Same bytes through our `decode_frame` and tungstenite's
        /// `FrameHeader::parse`: accepted frames agree on opcode, fin and
        /// payload, and every frame we refuse is one tungstenite refuses too
        /// or one whose header breaks a rule tungstenite leaves to its caller.
        #[test]
        fn differential_frame_parser(bytes in frame_bytes()) {
            use tungstenite::protocol::frame::FrameHeader as TgHeader;
            let mut cursor = std::io::Cursor::new(&bytes[..]);
            let theirs = TgHeader::parse(&mut cursor);
            let body = cursor.position() as usize;
            let mut buf = BytesMut::from(&bytes[..]);
            let ours = decode_frame(&mut buf, Role::Server, BIG);
            match ours {
                Ok(Some(frame)) => {
                    let (h, len) = theirs.unwrap().unwrap();
                    prop_assert!(!(h.rsv1 || h.rsv2 || h.rsv3));
                    prop_assert_eq!(h.is_final, frame.fin);
                    prop_assert_eq!(u8::from(h.opcode), frame.opcode.as_u8());
                    let len = len as usize;
                    let mut payload = bytes[body..body + len].to_vec();
                    apply_mask_naive(&mut payload, h.mask.unwrap());
                    prop_assert_eq!(&frame.payload[..], &payload[..]);
                    prop_assert_eq!(buf.len(), bytes.len() - body - len);
                }
                Ok(None) => match theirs {
                    Ok(None) => {}
                    Ok(Some((_, len))) => prop_assert!(body as u64 + len > bytes.len() as u64),
                    Err(e) => prop_assert!(false, "tungstenite refused what we wait on: {e}"),
                },
                Err(e) => match theirs {
                    Err(_) => {}
                    Ok(None) => prop_assert!(!matches!(e, FrameError::MessageTooBig { .. }), "{}", e),
                    Ok(Some((h, len))) => {
                        let control = u8::from(h.opcode) >= 8;
                        let explained = match e {
                            FrameError::ReservedBitsSet => h.rsv1 || h.rsv2 || h.rsv3,
                            FrameError::UnmaskedFrameFromClient => h.mask.is_none(),
                            FrameError::FragmentedControlFrame => control && !h.is_final,
                            FrameError::ControlFrameTooLong(n) => control && n as u64 == len && len > 125,
                            FrameError::PayloadLengthMsbSet => len >> 63 == 1,
                            FrameError::MessageTooBig { .. } => len > BIG as u64,
                            _ => false,
                        };
                        prop_assert!(explained, "{e} unexplained by {h:?} len {len}");
                    }
                },
            }
        }
    }

    /// A socket for tungstenite: reads the given bytes, swallows writes.
    struct Replay(std::io::Cursor<Vec<u8>>);

    impl std::io::Read for Replay {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            self.0.read(buf)
        }
    }

    impl std::io::Write for Replay {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[derive(Debug, Clone, Copy, PartialEq)]
    enum End {
        /// Input exhausted in a clean or incomplete state.
        Eof,
        Violation,
    }

    /// tungstenite's server-side message reader, normalized to our types.
    fn tungstenite_messages(bytes: &[u8], max: usize) -> (Vec<Message>, End) {
        use tungstenite::protocol::{Role as TgRole, WebSocket, WebSocketConfig};
        use tungstenite::{Error, Message as Tg, error::ProtocolError};
        // No frame limit: tungstenite applies it to control frames too, while
        // our limit is per data message. The generated lengths are small.
        let config = WebSocketConfig::default()
            .max_message_size(Some(max))
            .max_frame_size(None);
        let mut ws = WebSocket::from_raw_socket(
            Replay(std::io::Cursor::new(bytes.to_vec())),
            TgRole::Server,
            Some(config),
        );
        let mut out = Vec::new();
        loop {
            match ws.read() {
                Ok(Tg::Text(t)) => out.push(Message::Text(Bytes::copy_from_slice(t.as_bytes()))),
                Ok(Tg::Binary(b)) => out.push(Message::Binary(b)),
                Ok(Tg::Ping(b)) => out.push(Message::Ping(b)),
                Ok(Tg::Pong(b)) => out.push(Message::Pong(b)),
                Ok(Tg::Close(c)) => {
                    out.push(Message::Close(c.map(|c| CloseFrame {
                        code: c.code.into(),
                        reason: Bytes::copy_from_slice(c.reason.as_bytes()),
                    })));
                    return (out, End::Eof);
                }
                Ok(Tg::Frame(_)) => unreachable!("raw frames are never read"),
                Err(Error::Protocol(ProtocolError::ResetWithoutClosingHandshake)) => {
                    return (out, End::Eof);
                }
                Err(_) => return (out, End::Violation),
            }
        }
    }

    /// Our decoder, stopping after a Close like tungstenite does.
    fn our_messages(bytes: &[u8], max: usize) -> (Vec<Message>, Result<(), FrameError>) {
        let (messages, err) = decode_chunks(Role::Server, max, [bytes], true);
        (messages, err.map_or(Ok(()), Err))
    }

    /// A frame for the message-level differential: any opcode (reserved ones
    /// rarely), payload that is often valid UTF-8, rare rule violations.
    fn stream_frame() -> impl Strategy<Value = Vec<u8>> {
        let payload = prop_oneof![
            3 => ".{0,12}".prop_map(String::into_bytes),
            2 => proptest::collection::vec(any::<u8>(), 0..12),
            1 => prop::sample::select(vec![
                vec![0xE2, 0x82], vec![0xAC], vec![0xF0, 0x9F], vec![0x98, 0x80], vec![0xED, 0xA0, 0x80], vec![0xC0],
            ]),
            1 => (
                prop::sample::select(vec![0u16, 999, 1000, 1001, 1004, 1005, 1006, 1011, 1012, 1013, 1015, 1016, 2999, 3000, 4999, 5000]),
                ".{0,4}",
            )
                .prop_map(|(code, reason)| {
                    let mut p = code.to_be_bytes().to_vec();
                    p.extend_from_slice(reason.as_bytes());
                    p
                }),
            1 => (100usize..140).prop_map(|n| vec![b'x'; n]),
        ];
        let opcode = prop_oneof![
            6 => prop::sample::select(vec![0u8, 1, 2]),
            3 => prop::sample::select(vec![8u8, 9, 10]),
            1 => 0u8..16,
        ];
        (
            prop_oneof![4 => Just(true), 3 => Just(false)],
            prop_oneof![30 => Just(0u8), 1 => 1u8..8],
            opcode,
            prop_oneof![30 => Just(true), 1 => Just(false)],
            payload,
        )
            .prop_map(|(fin, rsv, op, masked, payload)| {
                let b0 = if fin { 0x80 } else { 0 } | rsv << 4 | op;
                raw(b0, masked.then_some([1, 2, 3, 4]), Len::Minimal, &payload)
            })
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 2048, ..ProptestConfig::default() })]

        /// Same byte stream through our MessageDecoder and tungstenite's
        /// server-side WebSocket: the same messages come out, and a stream
        /// one side refuses the other refuses too. Allowed differences: we
        /// refuse from the header where tungstenite waits for the whole frame
        /// (so it may see EOF instead), and tungstenite reports a bad close
        /// code as a Close(1002) message instead of an error.
        #[test]
        fn differential_message_decoder(
            frames in proptest::collection::vec(stream_frame(), 0..10),
            truncate in any::<prop::sample::Index>(),
            max in prop_oneof![Just(BIG), 8usize..64],
        ) {
            let mut bytes = frames.concat();
            if truncate.index(4) == 0 {
                let keep = truncate.index(bytes.len() + 1);
                bytes.truncate(keep);
            }
            let (mut ours, end) = our_messages(&bytes, max);
            let (mut theirs, their_end) = tungstenite_messages(&bytes, max);
            let protocol_close = |m: &Message| matches!(m, Message::Close(Some(c)) if c.code == 1002 && c.reason_str() == "Protocol violation");
            if matches!(end, Err(FrameError::InvalidCloseCode(_))) && their_end == End::Eof {
                // tungstenite answers a bad code with a 1002 close message
                // (unless the reason is bad UTF-8, which it does refuse).
                prop_assert!(theirs.pop().as_ref().is_some_and(protocol_close), "{theirs:?}");
                prop_assert_eq!(&ours, &theirs);
                return Ok(());
            }
            if let (Some(Message::Close(Some(c))), Some(t)) = (ours.last(), theirs.last()) {
                // 1014 is registered (we accept it); tungstenite predates it.
                if c.code == 1014 && protocol_close(t) {
                    ours.pop();
                    theirs.pop();
                }
            }
            prop_assert_eq!(&ours, &theirs);
            // When we refuse a frame from its header, tungstenite may still be
            // waiting for its payload (EOF), so only our success is binding.
            if end.is_ok() {
                prop_assert_eq!(their_end, End::Eof);
            }
            if their_end == End::Violation {
                prop_assert!(end.is_err());
            }
        }
    }
}
