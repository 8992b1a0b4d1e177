//! [`Text`]: a string kept inside its slot when short (most ids and
//! addresses are), else on the heap.
//!
//! Why: a decision reads a profile's id to find it and an address's text to
//! answer with it. A heap string is one more cache miss for each, and on a
//! table of millions every miss goes to memory; inline, the text is in the
//! slot's own cache line.

/// Bytes kept inline.
const INLINE: usize = 22;

/// A short string inline, a longer one boxed. 24 bytes either way.
#[derive(Clone, PartialEq, Eq)]
pub(super) enum Text {
    /// Up to [`INLINE`] bytes, and how many.
    Inline(u8, [u8; INLINE]),
    /// Longer.
    Heap(Box<str>),
}

impl Default for Text {
    fn default() -> Self {
        Text::Inline(0, [0; INLINE])
    }
}

impl std::fmt::Debug for Text {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.as_str().fmt(f)
    }
}

impl From<&str> for Text {
    fn from(s: &str) -> Self {
        if s.len() <= INLINE {
            let mut bytes = [0; INLINE];
            bytes[..s.len()].copy_from_slice(s.as_bytes());
            Text::Inline(u8::try_from(s.len()).unwrap_or(0), bytes)
        } else {
            Text::Heap(s.into())
        }
    }
}

impl Text {
    /// The string.
    pub(super) fn as_str(&self) -> &str {
        match self {
            // Copied from a `&str` whole: a valid UTF-8 prefix.
            Text::Inline(len, bytes) => {
                std::str::from_utf8(&bytes[..usize::from(*len)]).unwrap_or_default()
            }
            Text::Heap(s) => s,
        }
    }

    /// Bytes it owns on the heap.
    pub(super) fn heap_bytes(&self) -> usize {
        match self {
            Text::Inline(..) => 0,
            Text::Heap(s) => s.len(),
        }
    }

    /// The string's bytes.
    pub(super) fn as_bytes(&self) -> &[u8] {
        match self {
            Text::Inline(len, bytes) => &bytes[..usize::from(*len)],
            Text::Heap(s) => s.as_bytes(),
        }
    }

    /// Whether it is empty (a free slot).
    pub(super) fn is_empty(&self) -> bool {
        match self {
            Text::Inline(len, _) => *len == 0,
            Text::Heap(s) => s.is_empty(),
        }
    }

    /// Whether it equals `s`, without checking UTF-8 again.
    pub(super) fn is(&self, s: &str) -> bool {
        match self {
            Text::Inline(..) | Text::Heap(_) => self.as_bytes() == s.as_bytes(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_texts_stay_inline_and_long_ones_go_to_the_heap() {
        assert_eq!(std::mem::size_of::<Text>(), 24);
        for s in [
            "",
            "a",
            "ü-22-bytes-exactly!!",
            &"x".repeat(22),
            &"y".repeat(23),
            "ümlaut@bücher.example",
        ] {
            let t = Text::from(s);
            assert_eq!(t.as_str(), s);
            assert!(t.is(s));
            assert!(!t.is("other"));
            assert_eq!(t.is_empty(), s.is_empty());
            assert_eq!(matches!(t, Text::Inline(..)), s.len() <= INLINE);
        }
    }
}
