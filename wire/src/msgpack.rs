//! A cursor over MessagePack bytes, for the hand-written fast paths that
//! read frames of a known shape in one pass: the daemon's decoding of
//! device batches (`batch::fast`) and device-sim's reading of the frames
//! subscribers receive.
//!
//! Owns: stepping over the bytes and reading one container header, string
//! or scalar at a time, in place. Every read checks that its bytes are
//! there and returns `None` if not, or if the marker is not one it reads
//! (containers' contents, binary and extension values): the caller then
//! gives the frame to a checked decoder. It never panics. Its functions
//! are `#[inline]`: they are a few instructions each, called per field,
//! and device-sim calls them from another crate.

/// An integer as MessagePack carries it: non-negative values as `Pos`
/// whichever type encoded them, as serde's decoders read them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Int {
    Pos(u64),
    Neg(i64),
}

impl Int {
    /// The integer as an `i64`, if it fits.
    #[inline]
    pub fn to_i64(self) -> Option<i64> {
        match self {
            Int::Pos(n) => i64::try_from(n).ok(),
            Int::Neg(n) => Some(n),
        }
    }
}

/// A value that is not a container.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Scalar<'a> {
    Nil,
    Bool(bool),
    Int(Int),
    Float(f64),
    /// The bytes of a string, not yet checked to be UTF-8.
    Str(&'a [u8]),
}

/// What is left of the bytes.
#[derive(Debug, Clone, Copy)]
pub struct Cursor<'a>(&'a [u8]);

impl<'a> Cursor<'a> {
    #[inline]
    pub fn new(bytes: &'a [u8]) -> Cursor<'a> {
        Cursor(bytes)
    }

    /// The bytes not read yet.
    #[inline]
    pub fn rest(&self) -> &'a [u8] {
        self.0
    }

    /// Takes `bytes` if what is left starts with them (a known key or
    /// header, compared as bytes).
    #[inline]
    pub fn eat(&mut self, bytes: &[u8]) -> bool {
        match self.0.strip_prefix(bytes) {
            Some(rest) => {
                self.0 = rest;
                true
            }
            None => false,
        }
    }

    #[inline]
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let (head, rest) = self.0.split_at_checked(n)?;
        self.0 = rest;
        Some(head)
    }

    #[inline]
    fn byte(&mut self) -> Option<u8> {
        Some(self.take(1)?[0])
    }

    #[inline]
    fn be<const N: usize>(&mut self) -> Option<[u8; N]> {
        self.take(N)?.try_into().ok()
    }

    #[inline]
    fn len16(&mut self) -> Option<usize> {
        Some(u16::from_be_bytes(self.be()?) as usize)
    }

    #[inline]
    fn len32(&mut self) -> Option<usize> {
        Some(u32::from_be_bytes(self.be()?) as usize)
    }

    #[inline]
    pub fn map_len(&mut self) -> Option<usize> {
        self.container_len(0x80, 0xde)
    }

    #[inline]
    pub fn array_len(&mut self) -> Option<usize> {
        self.container_len(0x90, 0xdc)
    }

    /// A map's or an array's length: the fix form's markers are `fix` to
    /// `fix + 15`, the 16-bit form's `long` and the 32-bit form's `long + 1`
    /// (map: 0x80, 0xde, 0xdf; array: 0x90, 0xdc, 0xdd).
    #[inline]
    fn container_len(&mut self, fix: u8, long: u8) -> Option<usize> {
        match self.byte()? {
            m if m & 0xf0 == fix => Some(usize::from(m & 0x0f)),
            m if m == long => self.len16(),
            m if m == long + 1 => self.len32(),
            _ => None,
        }
    }

    /// The bytes of a string, not checked to be UTF-8: a map key the
    /// caller compares with the names it knows, or a string it checks
    /// itself; `None` for anything but a string.
    #[inline]
    pub fn string(&mut self) -> Option<&'a [u8]> {
        let m = self.byte()?;
        self.str_body(m)
    }

    #[inline]
    fn str_body(&mut self, marker: u8) -> Option<&'a [u8]> {
        let n = match marker {
            m @ 0xa0..=0xbf => usize::from(m & 0x1f),
            0xd9 => usize::from(self.byte()?),
            0xda => self.len16()?,
            0xdb => self.len32()?,
            _ => return None,
        };
        self.take(n)
    }

    /// A nil, bool, integer, float or string; `None` for anything else.
    #[inline]
    pub fn scalar(&mut self) -> Option<Scalar<'a>> {
        let m = self.byte()?;
        Some(match m {
            0x00..=0x7f => Scalar::Int(Int::Pos(u64::from(m))),
            0xe0..=0xff => Scalar::Int(Int::Neg(i64::from(m as i8))),
            0xc0 => Scalar::Nil,
            0xc2 => Scalar::Bool(false),
            0xc3 => Scalar::Bool(true),
            0xcc => Scalar::Int(Int::Pos(u64::from(self.byte()?))),
            0xcd => Scalar::Int(Int::Pos(u64::from(u16::from_be_bytes(self.be()?)))),
            0xce => Scalar::Int(Int::Pos(u64::from(u32::from_be_bytes(self.be()?)))),
            0xcf => Scalar::Int(Int::Pos(u64::from_be_bytes(self.be()?))),
            0xd0 => signed(i64::from(i8::from_be_bytes(self.be()?))),
            0xd1 => signed(i64::from(i16::from_be_bytes(self.be()?))),
            0xd2 => signed(i64::from(i32::from_be_bytes(self.be()?))),
            0xd3 => signed(i64::from_be_bytes(self.be()?)),
            0xca => Scalar::Float(f64::from(f32::from_be_bytes(self.be()?))),
            0xcb => Scalar::Float(f64::from_be_bytes(self.be()?)),
            0xa0..=0xbf | 0xd9..=0xdb => Scalar::Str(self.str_body(m)?),
            _ => return None,
        })
    }
}

#[inline]
fn signed(n: i64) -> Scalar<'static> {
    match u64::try_from(n) {
        Ok(p) => Scalar::Int(Int::Pos(p)),
        Err(_) => Scalar::Int(Int::Neg(n)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_scalar_form_reads_and_short_bytes_are_refused() {
        let mut bytes = Vec::new();
        for n in [0i64, 127, 128, 255, 65_535, 65_536, i64::MAX] {
            rmp::encode::write_sint(&mut bytes, n).unwrap();
        }
        for n in [-1i64, -32, -33, -129, -40_000, i64::MIN] {
            rmp::encode::write_sint(&mut bytes, n).unwrap();
        }
        rmp::encode::write_uint(&mut bytes, u64::MAX).unwrap();
        rmp::encode::write_f32(&mut bytes, 1.5).unwrap();
        rmp::encode::write_f64(&mut bytes, -2.25).unwrap();
        rmp::encode::write_nil(&mut bytes).unwrap();
        rmp::encode::write_bool(&mut bytes, true).unwrap();
        for len in [0, 31, 32, 255, 256, 70_000] {
            rmp::encode::write_str(&mut bytes, &"s".repeat(len)).unwrap();
        }
        let mut c = Cursor::new(&bytes);
        let ints = [
            0i64,
            127,
            128,
            255,
            65_535,
            65_536,
            i64::MAX,
            -1,
            -32,
            -33,
            -129,
            -40_000,
            i64::MIN,
        ];
        for n in ints {
            let Some(Scalar::Int(i)) = c.scalar() else {
                panic!("{n}")
            };
            assert_eq!(i.to_i64(), Some(n));
        }
        assert_eq!(c.scalar(), Some(Scalar::Int(Int::Pos(u64::MAX))));
        assert_eq!(Int::Pos(u64::MAX).to_i64(), None);
        assert_eq!(c.scalar(), Some(Scalar::Float(1.5)));
        assert_eq!(c.scalar(), Some(Scalar::Float(-2.25)));
        assert_eq!(c.scalar(), Some(Scalar::Nil));
        assert_eq!(c.scalar(), Some(Scalar::Bool(true)));
        for len in [0, 31, 32, 255, 256, 70_000] {
            assert_eq!(c.scalar(), Some(Scalar::Str("s".repeat(len).as_bytes())));
        }
        assert!(c.rest().is_empty());
        assert_eq!(c.scalar(), None);
        // Cut anywhere, what is there reads and the rest is refused.
        for cut in 0..bytes.len().min(400) {
            let mut c = Cursor::new(&bytes[..cut]);
            while c.scalar().is_some() {}
        }
        // Containers' contents are not scalars; their headers read.
        let mut c = Cursor::new(b"\x92\x81\xa1k\xc4\x00");
        assert_eq!(c.array_len(), Some(2));
        assert_eq!(c.map_len(), Some(1));
        assert_eq!(c.string(), Some(&b"k"[..]));
        assert_eq!(Cursor::new(b"\x01").string(), None, "not a string");
        let mut c = Cursor::new(b"\xa1k\xc4\x00");
        assert!(c.eat(b"\xa1k"));
        assert!(!c.eat(b"x"));
        assert_eq!(c.scalar(), None, "binary is refused");
    }
}
