//! The server's side of an upgraded WebSocket (RFC 6455): client frames in,
//! server frames out, over whatever byte stream the upgrade handed over.
//!
//! Owns: the bytes read but not yet parsed, the message being assembled
//! from fragments, and the one frame (plus at most one pong) on its way out.
//! tungstenite parses and formats the frame headers; what is ours is when
//! memory is held. An idle socket holds no buffer at all: a read goes into a
//! chunk on the polling thread's stack and only the bytes of a frame that
//! has not fully arrived are kept. tungstenite's own socket keeps its read
//! buffer for the connection's life, and at tens of thousands of silent
//! devices that buffer was most of a connection's memory.
//!
//! Never: answers a client frame that breaks RFC 6455 with anything but the
//! matching [`End`] (1002, 1007, 1009); holds more than `max_message` bytes
//! of one message (nor room for more than has arrived); leaves half a frame
//! on the wire when a send is cancelled (the frame stays queued and the next
//! send or the closing frame writes its rest first).

use std::future::{poll_fn, Future};
use std::io::Cursor;
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use bytes::{Buf, Bytes, BytesMut};
use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tungstenite::protocol::frame::coding::{Control, Data, OpCode};
use tungstenite::protocol::frame::FrameHeader;
use tungstenite::Utf8Bytes;

use super::End;

/// Bytes asked of the stream per read. The chunk lives on the stack of the
/// poll only, so it costs an idle socket nothing; a read that fills it is
/// followed by another.
const READ_CHUNK: usize = 8 * 1024;

/// Payloads at most this long go out in one buffer with their header (one
/// write, one segment); longer ones are written from their own buffer
/// beside the header, without a copy, where the stream takes vectored
/// writes.
const COPY_BELOW: usize = 1024;

/// A control frame's payload limit (RFC 6455 §5.5).
const MAX_CONTROL: usize = 125;

/// A whole message from the client. Pings are answered by the socket (the
/// pong goes out with the next write); a close is echoed by
/// [`super::close`]. Both still reach the loop, as activity.
#[derive(Debug)]
pub enum Message {
    Text(Utf8Bytes),
    Binary(Bytes),
    Ping,
    Pong,
    Close,
}

/// What the server sends.
#[derive(Debug)]
pub enum Outbound {
    Text(Utf8Bytes),
    Binary(Bytes),
    /// An empty ping (the keep-alive).
    Ping,
    /// Whole server frames, already framed ([`push_binary_frame`]), that
    /// leave as they are: several small messages in one write.
    Frames(Bytes),
    /// One message whose payload is `pieces` one after the other (text:
    /// valid UTF-8 as a whole), written where they lie with vectored
    /// writes instead of being copied into one buffer first: what a
    /// subscriber's frame of shared, already encoded readings is.
    Spliced {
        text: bool,
        pieces: Vec<Bytes>,
    },
}

/// Most slices handed to one vectored write (Linux takes 1,024; a spliced
/// frame has a few dozen at most, and any more go in the next write).
pub const MAX_SLICES: usize = 64;

/// Appends `payload` to `out` as one final, unmasked binary frame: what
/// [`Outbound::Frames`] carries.
pub fn push_binary_frame(out: &mut Vec<u8>, payload: &[u8]) {
    let (head, head_len) = frame_head(OpCode::Data(Data::Binary), payload.len());
    out.extend_from_slice(&head[..head_len as usize]);
    out.extend_from_slice(payload);
}

/// A final server frame's header (unmasked) and its length.
fn frame_head(opcode: OpCode, payload_len: usize) -> ([u8; 10], u8) {
    let header = FrameHeader {
        is_final: true,
        opcode,
        ..FrameHeader::default()
    };
    let mut head = [0u8; 10];
    let mut cursor = Cursor::new(&mut head[..]);
    header
        .format(payload_len as u64, &mut cursor)
        .expect("a server frame header fits in 10 bytes");
    let len = cursor.position() as u8;
    (head, len)
}

/// A message arriving in fragments (RFC 6455 §5.4).
struct Fragments {
    text: bool,
    data: BytesMut,
}

/// One server frame on its way out: its header, its payload (in pieces,
/// for a spliced message), and how much of them has been written.
struct Outgoing {
    head: [u8; 10],
    head_len: u8,
    payload: Bytes,
    /// The rest of a spliced payload, after `payload` (empty otherwise:
    /// no allocation).
    more: Vec<Bytes>,
    total: usize,
    written: usize,
}

impl Outgoing {
    fn new(opcode: OpCode, payload: Bytes) -> Outgoing {
        Outgoing::spliced(opcode, payload, Vec::new())
    }

    fn spliced(opcode: OpCode, payload: Bytes, more: Vec<Bytes>) -> Outgoing {
        let len = payload.len() + more.iter().map(Bytes::len).sum::<usize>();
        let (head, head_len) = frame_head(opcode, len);
        Outgoing {
            head,
            head_len,
            payload,
            more,
            total: head_len as usize + len,
            written: 0,
        }
    }

    /// Bytes that are already whole frames.
    fn framed(frames: Bytes) -> Outgoing {
        Outgoing {
            head: [0; 10],
            head_len: 0,
            total: frames.len(),
            payload: frames,
            more: Vec::new(),
            written: 0,
        }
    }

    /// Writes what is left; `Ready(Ok)` once all of it is out.
    fn poll_write<S: AsyncWrite + Unpin>(
        &mut self,
        io: &mut S,
        cx: &mut Context<'_>,
    ) -> Poll<std::io::Result<()>> {
        let head_len = self.head_len as usize;
        while self.written < self.total {
            let n = if self.written < head_len && self.total - head_len <= COPY_BELOW {
                // Small frames (acks, pongs) leave in one piece.
                let mut one = [0u8; 10 + COPY_BELOW];
                let mut end = 0;
                for part in self.unwritten() {
                    one[end..end + part.len()].copy_from_slice(part);
                    end += part.len();
                }
                ready!(Pin::new(&mut *io).poll_write(cx, &one[..end]))?
            } else {
                let mut bufs = [std::io::IoSlice::new(&[]); MAX_SLICES];
                let mut count = 0;
                for (slot, part) in bufs.iter_mut().zip(self.unwritten()) {
                    *slot = std::io::IoSlice::new(part);
                    count += 1;
                }
                ready!(Pin::new(&mut *io).poll_write_vectored(cx, &bufs[..count]))?
            };
            if n == 0 {
                return Poll::Ready(Err(std::io::ErrorKind::WriteZero.into()));
            }
            self.written += n;
        }
        Poll::Ready(Ok(()))
    }

    /// What is left to write, in order, as slices that are not empty.
    fn unwritten(&self) -> impl Iterator<Item = &[u8]> {
        let mut skip = self.written;
        let parts = std::iter::once(&self.head[..self.head_len as usize])
            .chain(std::iter::once(&self.payload[..]))
            .chain(self.more.iter().map(|b| &b[..]));
        parts.filter_map(move |part| {
            if skip >= part.len() {
                skip -= part.len();
                return None;
            }
            let rest = &part[skip..];
            skip = 0;
            Some(rest)
        })
    }
}

/// An upgraded WebSocket, server side.
pub struct Socket<S = TokioIo<Upgraded>> {
    io: S,
    /// Bytes read and not yet parsed: empty and unallocated between frames.
    carry: BytesMut,
    fragments: Option<Fragments>,
    /// Largest message (and frame) accepted; past it, [`End::TooBig`].
    max_message: usize,
    out: Option<Outgoing>,
    /// The answer to the latest ping, waiting for `out` to be written.
    pong: Option<Bytes>,
    /// The client sent a close frame (RFC 6455 §5.5.1): its code, echoed.
    peer_closed: Option<u16>,
    /// Bytes arrived since the last message [`Socket::recv`] returned (or
    /// since [`Socket::take_progress`]): a frame is still arriving.
    progressed: bool,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Socket<S> {
    pub fn new(io: S, max_message: usize) -> Socket<S> {
        Socket {
            io,
            carry: BytesMut::new(),
            fragments: None,
            max_message,
            out: None,
            pong: None,
            peer_closed: None,
            progressed: false,
        }
    }

    /// Whether bytes arrived that are not yet a message the loop has seen,
    /// and forgets it. A frame that takes longer than the idle timeout to
    /// arrive (a big batch on a slow link) is activity all the same.
    pub fn take_progress(&mut self) -> bool {
        std::mem::take(&mut self.progressed)
    }

    /// The next whole message. `Err` ends the connection: [`End::Gone`]
    /// when the stream ended or broke, [`End::Protocol`], [`End::BadData`]
    /// or [`End::TooBig`] for what RFC 6455 and the size limit refuse.
    /// Cancel-safe: bytes read stay in the socket until a message is whole.
    pub async fn recv(&mut self) -> Result<Message, End> {
        loop {
            if let Some(msg) = self.parse()? {
                // The loop counts the message as activity itself.
                self.progressed = false;
                return Ok(msg);
            }
            poll_fn(|cx| {
                // A pong (or a cancelled send) waiting to go out moves along
                // while we wait to read; a full socket does not hold the read.
                if let Poll::Ready(Err(_)) = self.poll_write_queued(cx) {
                    return Poll::Ready(Err(End::Gone));
                }
                self.poll_read_some(cx)
            })
            .await?;
        }
    }

    /// The next message only if it is already here (or the socket already
    /// ended); never waits.
    pub fn try_recv(&mut self) -> Option<Result<Message, End>> {
        let waker = std::task::Waker::noop();
        let mut cx = Context::from_waker(waker);
        let recv = std::pin::pin!(self.recv());
        match recv.poll(&mut cx) {
            Poll::Ready(r) => Some(r),
            Poll::Pending => None,
        }
    }

    /// Sends one message: the rest of an earlier frame and a waiting pong
    /// first. Cancel-safe: a frame started is finished by the next send or
    /// by the closing frame. `Err` means the stream broke.
    pub async fn send(&mut self, msg: Outbound) -> std::io::Result<()> {
        poll_fn(|cx| self.poll_write_queued(cx)).await?;
        self.out = Some(match msg {
            Outbound::Text(t) => Outgoing::new(OpCode::Data(Data::Text), Bytes::from(t)),
            Outbound::Binary(b) => Outgoing::new(OpCode::Data(Data::Binary), b),
            Outbound::Ping => Outgoing::new(OpCode::Control(Control::Ping), Bytes::new()),
            Outbound::Frames(frames) => Outgoing::framed(frames),
            Outbound::Spliced { text, pieces } => {
                let opcode = OpCode::Data(if text { Data::Text } else { Data::Binary });
                Outgoing::spliced(opcode, Bytes::new(), pieces)
            }
        });
        poll_fn(|cx| self.poll_write_queued(cx)).await
    }

    /// Sends a close frame with `code` and `reason` (after anything queued).
    pub async fn send_close(&mut self, code: u16, reason: &str) -> std::io::Result<()> {
        poll_fn(|cx| self.poll_write_queued(cx)).await?;
        let mut payload = Vec::with_capacity(2 + reason.len());
        payload.extend_from_slice(&code.to_be_bytes());
        payload.extend_from_slice(reason.as_bytes());
        self.out = Some(Outgoing::new(
            OpCode::Control(Control::Close),
            payload.into(),
        ));
        poll_fn(|cx| self.poll_write_queued(cx)).await
    }

    /// The code of the client's close frame, if it sent one (1005, "no
    /// status", when it sent none: RFC 6455 §7.1.5).
    pub fn peer_closed(&self) -> Option<u16> {
        self.peer_closed
    }

    /// Writes the queued frame, then the pong, then flushes (a TLS stream
    /// holds records until flushed).
    fn poll_write_queued(&mut self, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        loop {
            if let Some(out) = &mut self.out {
                ready!(out.poll_write(&mut self.io, cx))?;
                self.out = None;
                continue;
            }
            match self.pong.take() {
                Some(p) => self.out = Some(Outgoing::new(OpCode::Control(Control::Pong), p)),
                None => return Pin::new(&mut self.io).poll_flush(cx),
            }
        }
    }

    /// Reads once into a stack chunk and keeps what came.
    fn poll_read_some(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), End>> {
        let mut chunk = [MaybeUninit::<u8>::uninit(); READ_CHUNK];
        let mut buf = ReadBuf::uninit(&mut chunk);
        match ready!(Pin::new(&mut self.io).poll_read(cx, &mut buf)) {
            Err(_) => Poll::Ready(Err(End::Gone)),
            Ok(()) if buf.filled().is_empty() => Poll::Ready(Err(End::Gone)),
            Ok(()) => {
                self.carry.extend_from_slice(buf.filled());
                self.progressed = true;
                Poll::Ready(Ok(()))
            }
        }
    }

    /// Takes whole frames off `carry` until a message is complete; `None`
    /// when more bytes are needed.
    fn parse(&mut self) -> Result<Option<Message>, End> {
        loop {
            let mut cursor = Cursor::new(&self.carry[..]);
            let Some((header, len)) = FrameHeader::parse(&mut cursor).map_err(|_| End::Protocol)?
            else {
                return Ok(None);
            };
            let head_len = cursor.position() as usize;
            let len = self.check(&header, len)?;
            if self.carry.len() < head_len + len {
                // No room is reserved for the announced length: memory
                // follows the bytes that actually came (a header alone
                // must not pin `max_message`).
                return Ok(None);
            }
            self.carry.advance(head_len);
            let mut payload = self.carry.split_to(len);
            if self.carry.is_empty() {
                // Nothing pending: let go of the buffer (the payload keeps
                // its part alive only as long as it is used).
                self.carry = BytesMut::new();
            }
            let mask = header.mask.expect("check() refuses unmasked frames");
            unmask(&mut payload, mask);
            if let Some(msg) = self.on_frame(&header, payload)? {
                return Ok(Some(msg));
            }
        }
    }

    /// RFC 6455 §5.2, §5.4, §5.5 on a frame header, and the size limit.
    fn check(&self, header: &FrameHeader, len: u64) -> Result<usize, End> {
        if header.rsv1 || header.rsv2 || header.rsv3 {
            return Err(End::Protocol); // no extension was negotiated
        }
        if header.mask.is_none() {
            return Err(End::Protocol); // clients must mask (§5.1)
        }
        if len >> 63 != 0 {
            return Err(End::Protocol); // the top bit must be 0 (§5.2)
        }
        let len = usize::try_from(len).map_err(|_| End::TooBig)?;
        match header.opcode {
            OpCode::Control(_) if !header.is_final || len > MAX_CONTROL => Err(End::Protocol),
            OpCode::Data(Data::Continue) if self.fragments.is_none() => Err(End::Protocol),
            OpCode::Data(Data::Text | Data::Binary) if self.fragments.is_some() => {
                Err(End::Protocol)
            }
            OpCode::Data(_) => {
                let so_far = self.fragments.as_ref().map_or(0, |f| f.data.len());
                if so_far.saturating_add(len) > self.max_message {
                    Err(End::TooBig)
                } else {
                    Ok(len)
                }
            }
            OpCode::Control(_) => Ok(len),
        }
    }

    /// A checked, unmasked frame: a message when it completes one.
    fn on_frame(
        &mut self,
        header: &FrameHeader,
        payload: BytesMut,
    ) -> Result<Option<Message>, End> {
        let data = match header.opcode {
            OpCode::Control(Control::Ping) => {
                self.pong = Some(payload.freeze());
                return Ok(Some(Message::Ping));
            }
            OpCode::Control(Control::Pong) => return Ok(Some(Message::Pong)),
            OpCode::Control(Control::Close) => {
                self.peer_closed = Some(close_code(&payload)?);
                return Ok(Some(Message::Close));
            }
            OpCode::Control(Control::Reserved(_)) | OpCode::Data(Data::Reserved(_)) => {
                return Err(End::Protocol); // FrameHeader::parse refuses these already
            }
            OpCode::Data(Data::Continue) => {
                let f = self.fragments.as_mut().expect("check() saw a start");
                f.data.extend_from_slice(&payload);
                if !header.is_final {
                    return Ok(None);
                }
                let f = self.fragments.take().expect("just used");
                (f.text, f.data)
            }
            OpCode::Data(kind) => {
                let text = kind == Data::Text;
                if !header.is_final {
                    self.fragments = Some(Fragments {
                        text,
                        data: payload,
                    });
                    return Ok(None);
                }
                (text, payload)
            }
        };
        let (text, bytes) = data;
        Ok(Some(if text {
            Message::Text(Utf8Bytes::try_from(bytes.freeze()).map_err(|_| End::BadData)?)
        } else {
            Message::Binary(bytes.freeze())
        }))
    }
}

/// The code of a close frame's payload (RFC 6455 §5.5.1, §7.4): none (1005),
/// or two bytes and a UTF-8 reason. A code that may not be sent is a
/// protocol error, a reason that is not UTF-8 is bad data (1007).
fn close_code(payload: &[u8]) -> Result<u16, End> {
    match payload {
        [] => Ok(1005),
        [_] => Err(End::Protocol),
        [a, b, reason @ ..] => {
            let code = u16::from_be_bytes([*a, *b]);
            // 1004-1006 and 1015 are reserved; 1012-1014 are IANA's.
            if !matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999) {
                return Err(End::Protocol);
            }
            std::str::from_utf8(reason).map_err(|_| End::BadData)?;
            Ok(code)
        }
    }
}

/// RFC 6455 §5.3: XOR with the 4-byte key, repeating.
fn unmask(payload: &mut [u8], mask: [u8; 4]) {
    let key = u32::from_ne_bytes(mask);
    let mut words = payload.chunks_exact_mut(4);
    for w in &mut words {
        let v = u32::from_ne_bytes([w[0], w[1], w[2], w[3]]) ^ key;
        w.copy_from_slice(&v.to_ne_bytes());
    }
    for (i, b) in words.into_remainder().iter_mut().enumerate() {
        *b ^= mask[i];
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};

    /// A client frame, masked with `key` unless `key` is `None`.
    fn frame(fin: bool, opcode: u8, payload: &[u8], key: Option<[u8; 4]>) -> Vec<u8> {
        let mut f = vec![(u8::from(fin) << 7) | opcode];
        let mask_bit = if key.is_some() { 0x80 } else { 0 };
        match payload.len() {
            n if n < 126 => f.push(mask_bit | n as u8),
            n if n <= 0xffff => {
                f.push(mask_bit | 126);
                f.extend((n as u16).to_be_bytes());
            }
            n => {
                f.push(mask_bit | 127);
                f.extend((n as u64).to_be_bytes());
            }
        }
        if let Some(key) = key {
            f.extend(key);
            f.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
        } else {
            f.extend(payload);
        }
        f
    }

    const KEY: Option<[u8; 4]> = Some([0x12, 0x34, 0x56, 0x78]);

    fn pair(max: usize) -> (Socket<DuplexStream>, DuplexStream) {
        let (server, client) = tokio::io::duplex(1 << 20);
        (Socket::new(server, max), client)
    }

    /// Reads one server frame: (first byte, payload).
    async fn read_frame(client: &mut DuplexStream) -> (u8, Vec<u8>) {
        let b0 = client.read_u8().await.unwrap();
        let b1 = client.read_u8().await.unwrap();
        assert_eq!(b1 & 0x80, 0, "server frames are not masked");
        let len = match b1 & 0x7f {
            126 => client.read_u16().await.unwrap() as usize,
            127 => client.read_u64().await.unwrap() as usize,
            n => n as usize,
        };
        let mut payload = vec![0; len];
        client.read_exact(&mut payload).await.unwrap();
        (b0, payload)
    }

    #[tokio::test]
    async fn frames_sent_together_arrive_as_the_frames_they_are() {
        let (mut s, mut c) = pair(1 << 20);
        let lens = [0, 5, 125, 126, 300, 65_535, 65_536];
        let payloads: Vec<Vec<u8>> = lens
            .iter()
            .map(|&len| (0..len).map(|i| (i * 7) as u8).collect())
            .collect();
        let mut frames = Vec::new();
        for p in &payloads {
            push_binary_frame(&mut frames, p);
        }
        let expected: Vec<u8> = payloads
            .iter()
            .flat_map(|p| frame(true, 0x2, p, None))
            .collect();
        assert_eq!(frames, expected, "each one a final binary frame, unmasked");
        let reader = tokio::spawn(async move {
            let mut got = Vec::new();
            for _ in 0..lens.len() {
                got.push(read_frame(&mut c).await);
            }
            got
        });
        s.send(Outbound::Frames(frames.into())).await.unwrap();
        let got = reader.await.unwrap();
        for ((b0, payload), sent) in got.iter().zip(&payloads) {
            assert_eq!((*b0, payload), (0x82, sent));
        }
    }

    #[tokio::test]
    async fn masked_frames_of_every_length_form_arrive_whole() {
        let (mut s, mut c) = pair(1 << 20);
        for len in [0, 5, 125, 126, 300, 65_535, 65_536, 200_000] {
            let payload: Vec<u8> = (0..len).map(|i| (i * 7) as u8).collect();
            c.write_all(&frame(true, 0x2, &payload, KEY)).await.unwrap();
            match s.recv().await.unwrap() {
                Message::Binary(b) => assert_eq!(&b[..], &payload[..], "len {len}"),
                other => panic!("len {len}: {other:?}"),
            }
        }
        assert!(s.carry.capacity() == 0, "no buffer is held between frames");
    }

    #[tokio::test]
    async fn part_of_a_frame_is_progress_and_a_whole_message_resets_it() {
        let (mut s, mut c) = pair(100);
        let f = frame(true, 0x2, b"hello", KEY);
        c.write_all(&f[..4]).await.unwrap();
        let recv = tokio::time::timeout(std::time::Duration::from_millis(20), s.recv());
        assert!(recv.await.is_err(), "the frame is not whole yet");
        assert!(s.take_progress(), "bytes came");
        assert!(!s.take_progress(), "taken");
        c.write_all(&f[4..]).await.unwrap();
        assert!(matches!(s.recv().await.unwrap(), Message::Binary(_)));
        assert!(!s.take_progress(), "the message itself is the activity");
    }

    #[tokio::test]
    async fn a_header_alone_does_not_pin_the_announced_length() {
        let (mut s, mut c) = pair(1 << 20);
        let f = frame(true, 0x2, &vec![1; 1 << 20], KEY);
        c.write_all(&f[..20]).await.unwrap();
        let recv = tokio::time::timeout(std::time::Duration::from_millis(20), s.recv());
        assert!(recv.await.is_err(), "the frame is not whole yet");
        assert!(s.carry.capacity() < 64 * 1024, "{}", s.carry.capacity());
    }

    #[tokio::test]
    async fn frames_split_anywhere_and_several_per_read_are_parsed() {
        let (mut s, mut c) = pair(1 << 20);
        let mut bytes = frame(true, 0x2, b"first", KEY);
        bytes.extend(frame(true, 0x1, "zweite \u{e9}".as_bytes(), KEY));
        bytes.extend(frame(true, 0x2, &[9; 400], KEY));
        let writer = tokio::spawn(async move {
            for piece in bytes.chunks(3) {
                c.write_all(piece).await.unwrap();
                tokio::task::yield_now().await;
            }
            c
        });
        assert!(matches!(s.recv().await.unwrap(), Message::Binary(b) if &b[..] == b"first"));
        assert!(
            matches!(s.recv().await.unwrap(), Message::Text(t) if t.as_str() == "zweite \u{e9}")
        );
        assert!(matches!(s.recv().await.unwrap(), Message::Binary(b) if b.len() == 400));
        drop(writer.await.unwrap());
        assert_eq!(s.recv().await.unwrap_err(), End::Gone);
    }

    #[tokio::test]
    async fn fragments_are_joined_with_pings_between() {
        let (mut s, mut c) = pair(1 << 20);
        c.write_all(&frame(false, 0x2, b"ab", KEY)).await.unwrap();
        c.write_all(&frame(true, 0x9, b"hi", KEY)).await.unwrap();
        c.write_all(&frame(false, 0x0, b"cd", KEY)).await.unwrap();
        c.write_all(&frame(true, 0x0, b"e", KEY)).await.unwrap();
        assert!(matches!(s.recv().await.unwrap(), Message::Ping));
        assert!(matches!(s.recv().await.unwrap(), Message::Binary(b) if &b[..] == b"abcde"));
        // The pong went out while the socket waited to read.
        let recv = tokio::time::timeout(std::time::Duration::from_millis(50), s.recv());
        assert!(recv.await.is_err(), "nothing more to read");
        assert_eq!(read_frame(&mut c).await, (0x8a, b"hi".to_vec()));
    }

    #[tokio::test]
    async fn rfc_violations_end_with_their_code() {
        let mut top_bit = vec![0x82, 0x80 | 127];
        top_bit.extend((1u64 << 63).to_be_bytes());
        top_bit.extend([0; 4]);
        let cases: Vec<(&str, Vec<u8>, End)> = vec![
            ("unmasked", frame(true, 0x2, b"x", None), End::Protocol),
            (
                "rsv1 set",
                {
                    let mut f = frame(true, 0x2, b"x", KEY);
                    f[0] |= 0x40;
                    f
                },
                End::Protocol,
            ),
            (
                "reserved opcode",
                frame(true, 0x3, b"x", KEY),
                End::Protocol,
            ),
            (
                "reserved control",
                frame(true, 0xb, b"", KEY),
                End::Protocol,
            ),
            ("long ping", frame(true, 0x9, &[0; 126], KEY), End::Protocol),
            (
                "fragmented ping",
                frame(false, 0x9, b"p", KEY),
                End::Protocol,
            ),
            (
                "continuation first",
                frame(true, 0x0, b"x", KEY),
                End::Protocol,
            ),
            (
                "bad utf-8",
                frame(true, 0x1, &[0xff, 0xfe], KEY),
                End::BadData,
            ),
            ("one-byte close", frame(true, 0x8, &[3], KEY), End::Protocol),
            (
                "close code 1005",
                frame(true, 0x8, &1005u16.to_be_bytes(), KEY),
                End::Protocol,
            ),
            (
                "close reason not UTF-8",
                frame(true, 0x8, &[0x03, 0xe8, 0xff], KEY),
                End::BadData,
            ),
            ("length with the top bit set", top_bit, End::Protocol),
            (
                "frame over the limit",
                frame(true, 0x2, &[0; 101], KEY),
                End::TooBig,
            ),
        ];
        for (what, bytes, end) in cases {
            let (mut s, mut c) = pair(100);
            c.write_all(&bytes).await.unwrap();
            assert_eq!(s.recv().await.unwrap_err(), end, "{what}");
        }
        // A new message inside a fragmented one, and fragments past the limit.
        let (mut s, mut c) = pair(100);
        c.write_all(&frame(false, 0x2, b"a", KEY)).await.unwrap();
        c.write_all(&frame(true, 0x2, b"b", KEY)).await.unwrap();
        assert_eq!(s.recv().await.unwrap_err(), End::Protocol);
        let (mut s, mut c) = pair(100);
        c.write_all(&frame(false, 0x2, &[0; 60], KEY))
            .await
            .unwrap();
        c.write_all(&frame(true, 0x0, &[0; 60], KEY)).await.unwrap();
        assert_eq!(s.recv().await.unwrap_err(), End::TooBig);
    }

    #[tokio::test]
    async fn a_close_is_reported_with_its_code() {
        let (mut s, mut c) = pair(100);
        let mut payload = 4000u16.to_be_bytes().to_vec();
        payload.extend(b"bye");
        c.write_all(&frame(true, 0x8, &payload, KEY)).await.unwrap();
        assert!(matches!(s.recv().await.unwrap(), Message::Close));
        assert_eq!(s.peer_closed(), Some(4000));
        let (mut s, mut c) = pair(100);
        c.write_all(&frame(true, 0x8, b"", KEY)).await.unwrap();
        assert!(matches!(s.recv().await.unwrap(), Message::Close));
        assert_eq!(s.peer_closed(), Some(1005));
    }

    #[tokio::test]
    async fn sends_are_unmasked_frames_and_a_cancelled_one_is_finished_first() {
        // A pipe of 64 bytes: a 5,000-byte frame cannot go out at once.
        let (server, mut c) = tokio::io::duplex(64);
        let mut s = Socket::new(server, 100);
        s.send(Outbound::Binary(Bytes::from_static(b"ack")))
            .await
            .unwrap();
        assert_eq!(read_frame(&mut c).await, (0x82, b"ack".to_vec()));

        let big: Vec<u8> = (0..5000).map(|i| i as u8).collect();
        cut_short(s.send(Outbound::Binary(big.clone().into()))).await;
        let reader = read_frames(c, 3);
        s.send(Outbound::Text("next".into())).await.unwrap();
        s.send_close(1001, "bye").await.unwrap();
        let mut close = 1001u16.to_be_bytes().to_vec();
        close.extend(b"bye");
        let expected = [(0x82, big), (0x81, b"next".to_vec()), (0x88, close)];
        assert_eq!(
            reader.await.unwrap(),
            expected,
            "the cut frame comes whole, first"
        );
    }

    /// Starts a send into a full pipe and checks that it cannot finish (it
    /// is left half written, to be finished by the next send).
    async fn cut_short(send: impl Future<Output = std::io::Result<()>>) {
        let cut = tokio::time::timeout(std::time::Duration::from_millis(20), send).await;
        assert!(cut.is_err(), "the pipe is full, the send is cut short");
    }

    /// Reads `n` frames off the client's end, on a task of its own, giving
    /// up after 10 s (a frame shorter than its header says never ends).
    fn read_frames(mut c: DuplexStream, n: usize) -> tokio::task::JoinHandle<Vec<(u8, Vec<u8>)>> {
        tokio::spawn(async move {
            let all = async {
                let mut frames = Vec::new();
                for _ in 0..n {
                    frames.push(read_frame(&mut c).await);
                }
                frames
            };
            tokio::time::timeout(std::time::Duration::from_secs(10), all)
                .await
                .expect("every frame arrives")
        })
    }

    /// A spliced message leaves as one frame of its pieces, in order, even
    /// through a pipe that takes a few bytes at a time, and one cut short
    /// is finished before the next.
    #[tokio::test]
    async fn a_spliced_message_is_one_frame_of_its_pieces() {
        let (server, c) = tokio::io::duplex(64);
        let mut s = Socket::new(server, 100);
        let pieces: Vec<Bytes> = [
            &b"{\"a\":["[..],
            b"",
            &[b'1'; 300],
            b",",
            &[b'2'; 5000],
            b"]}",
        ]
        .iter()
        .map(|p| Bytes::copy_from_slice(p))
        .collect();
        let whole = pieces.concat();
        cut_short(s.send(Outbound::Spliced {
            text: true,
            pieces: pieces.clone(),
        }))
        .await;
        let reader = read_frames(c, 3);
        s.send(Outbound::Spliced {
            text: false,
            pieces: vec![Bytes::from_static(b"x"), Bytes::from_static(b"yz")],
        })
        .await
        .unwrap();
        // More pieces than one vectored write takes.
        let many: Vec<Bytes> = (0..3 * MAX_SLICES)
            .map(|n| Bytes::from(vec![n as u8; 10 + n % 7]))
            .collect();
        let many_whole = many.concat();
        s.send(Outbound::Spliced {
            text: false,
            pieces: many,
        })
        .await
        .unwrap();
        let expected = [(0x81, whole), (0x82, b"xyz".to_vec()), (0x82, many_whole)];
        assert_eq!(
            reader.await.unwrap(),
            expected,
            "text, a small binary one, many pieces"
        );
    }

    #[test]
    fn unmask_undoes_the_mask_at_every_alignment() {
        for len in 0..20 {
            let plain: Vec<u8> = (0..len).map(|i| i as u8 * 3).collect();
            let key = [1, 2, 3, 250];
            let mut data: Vec<u8> = plain
                .iter()
                .enumerate()
                .map(|(i, b)| b ^ key[i % 4])
                .collect();
            unmask(&mut data, key);
            assert_eq!(data, plain);
        }
    }
}
