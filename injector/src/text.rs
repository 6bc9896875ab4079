//! Byte-string helpers and the composition of environment values. Pure functions, so the
//! host unit tests cover them; none of them can panic.

/// Appends bytes into a fixed buffer; once something does not fit, it stays failed.
pub struct Writer<'a> {
    buf: &'a mut [u8],
    len: usize,
    overflow: bool,
}

impl<'a> Writer<'a> {
    pub fn new(buf: &'a mut [u8]) -> Self {
        Writer {
            buf,
            len: 0,
            overflow: false,
        }
    }

    pub fn push(&mut self, bytes: &[u8]) -> &mut Self {
        for &b in bytes {
            match self.buf.get_mut(self.len) {
                Some(slot) => {
                    *slot = b;
                    self.len += 1;
                }
                None => {
                    self.overflow = true;
                    break;
                }
            }
        }
        self
    }

    /// What was written, NUL-terminated, or `None` if it did not all fit.
    pub fn finish_c(mut self) -> Option<&'a [u8]> {
        self.push(b"\0");
        if self.overflow {
            return None;
        }
        let Writer { buf, len, .. } = self;
        buf.get(..len)
    }
}

/// The part of `path` after its last `/`.
pub fn basename(path: &[u8]) -> &[u8] {
    match path.iter().rposition(|&b| b == b'/') {
        Some(i) => path.get(i + 1..).unwrap_or_default(),
        None => path,
    }
}

/// `path` without its last `/` component; `None` if it has no `/`.
pub fn dirname(path: &[u8]) -> Option<&[u8]> {
    let i = path.iter().rposition(|&b| b == b'/')?;
    path.get(..i)
}

/// Whether `piece` occurs in `value` as a whole item of a `sep`-separated list.
pub fn contains_item(value: &[u8], piece: &[u8], sep: u8) -> bool {
    if piece.is_empty() {
        return false;
    }
    let mut start = 0;
    while let Some(rest) = value.get(start..) {
        if rest.len() < piece.len() {
            return false;
        }
        if rest.starts_with(piece) {
            let before_ok = start == 0 || value.get(start - 1) == Some(&sep);
            let after = rest.get(piece.len()).copied();
            if before_ok && (after.is_none() || after == Some(sep)) {
                return true;
            }
        }
        start += 1;
    }
    false
}

/// Where the injector's piece goes in a variable's list.
#[derive(Clone, Copy)]
pub enum Place {
    Front,
    Back,
}

/// The length of `current` joined with `piece`, NUL included: what `compose` needs.
pub fn composed_len(current: &[u8], piece: &[u8]) -> Option<usize> {
    current.len().checked_add(piece.len())?.checked_add(2)
}

/// `current` with `piece` added at `place`, separated by `sep`, NUL-terminated in `out`;
/// `None` when the piece is already there (an injected parent passed it on) or `out` is
/// too small.
pub fn compose<'a>(out: &'a mut [u8], current: &[u8], piece: &[u8], sep: u8, place: Place) -> Option<&'a [u8]> {
    if contains_item(current, piece, sep) {
        return None;
    }
    let mut w = Writer::new(out);
    match (place, current.is_empty()) {
        (_, true) => w.push(piece),
        (Place::Front, false) => w.push(piece).push(&[sep]).push(current),
        (Place::Back, false) => w.push(current).push(&[sep]).push(piece),
    };
    w.finish_c()
}

/// The bytes of a NUL-terminated C string, or `None` for a null pointer.
///
/// # Safety
/// `p` must be null or point to a readable NUL-terminated string that outlives the result.
pub unsafe fn c_str<'a>(p: *const u8) -> Option<&'a [u8]> {
    if p.is_null() {
        return None;
    }
    let mut n = 0;
    // SAFETY: the caller guarantees a NUL terminator, so every byte up to it is readable.
    while unsafe { *p.add(n) } != 0 {
        n += 1;
    }
    // SAFETY: those `n` bytes were just read.
    Some(unsafe { core::slice::from_raw_parts(p, n) })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn composed(current: &str, piece: &str, sep: u8, place: Place) -> Option<String> {
        let mut out = vec![0u8; composed_len(current.as_bytes(), piece.as_bytes()).unwrap()];
        let c = compose(&mut out, current.as_bytes(), piece.as_bytes(), sep, place)?;
        Some(String::from_utf8(c.strip_suffix(b"\0").unwrap().to_vec()).unwrap())
    }

    #[test]
    fn front_and_back_keep_the_user_value() {
        assert_eq!(
            composed("", "--require /x", b' ', Place::Front).unwrap(),
            "--require /x"
        );
        assert_eq!(
            composed("--max-old-space-size=64", "--require /x", b' ', Place::Front).unwrap(),
            "--require /x --max-old-space-size=64"
        );
        assert_eq!(composed("/app", "/boot", b':', Place::Front).unwrap(), "/boot:/app");
        assert_eq!(
            composed("-Xmx1g", "-javaagent:/a.jar", b' ', Place::Back).unwrap(),
            "-Xmx1g -javaagent:/a.jar"
        );
    }

    #[test]
    fn nothing_is_added_twice() {
        assert!(composed("--require /x", "--require /x", b' ', Place::Front).is_none());
        assert!(composed("-a --require /x -b", "--require /x", b' ', Place::Front).is_none());
        assert!(composed("/app:/boot", "/boot", b':', Place::Front).is_none());
        // A longer item that merely starts with the piece is a different item.
        assert_eq!(composed("/boot2", "/boot", b':', Place::Front).unwrap(), "/boot:/boot2");
        assert_eq!(composed("x/boot", "/boot", b':', Place::Front).unwrap(), "/boot:x/boot");
    }

    #[test]
    fn overflow_is_refused_not_truncated() {
        let mut out = [0u8; 8];
        assert!(compose(&mut out, b"abcdef", b"xyz", b' ', Place::Back).is_none());
        let mut w = Writer::new(&mut out);
        w.push(b"1234567");
        assert_eq!(w.finish_c(), Some(&b"1234567\0"[..]));
    }

    #[test]
    fn paths() {
        assert_eq!(basename(b"/usr/bin/node"), b"node");
        assert_eq!(basename(b"node"), b"node");
        assert_eq!(basename(b"/usr/bin/"), b"");
        assert_eq!(dirname(b"/opt/lumigo/injector"), Some(&b"/opt/lumigo"[..]));
        assert_eq!(dirname(b"x"), None);
    }
}
