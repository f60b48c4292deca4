//! Topic names: the grammar every entry point (JSON protocol, raw path, HTTP API, relay)
//! checks before a name reaches the registry.
//!
//! A topic is 1..=`max_len` bytes of ASCII letters, digits and `_ - . : / @ = { }`. The set is
//! small on purpose: such a name never needs escaping in JSON, in a URL path segment list
//! or in a Redis channel name, so encoders can copy it verbatim. `*`, `>`, `#` and spaces are
//! reserved (wildcards may use them later).

use thiserror::Error;

/// Limits applied to topic names; the gateway fills this from configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TopicRules {
    /// Longest accepted name in bytes.
    pub max_len: usize,
}

impl Default for TopicRules {
    fn default() -> Self {
        Self { max_len: 128 }
    }
}

/// Why a topic name was refused. The `Display` text is sent to clients.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum TopicError {
    #[error("topic name is empty")]
    Empty,
    #[error("topic name is {len} bytes, the limit is {max}")]
    TooLong { len: usize, max: usize },
    #[error("topic name contains {ch:?}; allowed are ASCII letters, digits and _ - . : / @ = {{ }}")]
    BadChar { ch: char },
}

/// True for the bytes a topic name may contain.
#[inline]
pub fn is_topic_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.' | b':' | b'/' | b'@' | b'=' | b'{' | b'}')
}

/// Checks `name` against the grammar and `rules`.
pub fn validate_topic(name: &str, rules: TopicRules) -> Result<(), TopicError> {
    if name.is_empty() {
        return Err(TopicError::Empty);
    }
    if name.len() > rules.max_len {
        return Err(TopicError::TooLong {
            len: name.len(),
            max: rules.max_len,
        });
    }
    match name.bytes().find(|b| !is_topic_byte(*b)) {
        Some(_) => {
            let ch = name
                .chars()
                .find(|c| !c.is_ascii() || !is_topic_byte(*c as u8))
                .unwrap_or('?');
            Err(TopicError::BadChar { ch })
        }
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_the_grammar() {
        let r = TopicRules::default();
        for t in ["a", "chat/room-1", "user@42", "{g17}:room-a", "x.y_z=1"] {
            assert_eq!(validate_topic(t, r), Ok(()), "{t}");
        }
    }

    #[test]
    fn refuses_bad_names() {
        let r = TopicRules { max_len: 4 };
        assert_eq!(validate_topic("", r), Err(TopicError::Empty));
        assert_eq!(validate_topic("abcde", r), Err(TopicError::TooLong { len: 5, max: 4 }));
        assert_eq!(validate_topic("a b", r), Err(TopicError::BadChar { ch: ' ' }));
        assert_eq!(validate_topic("a\"", r), Err(TopicError::BadChar { ch: '"' }));
        assert_eq!(validate_topic("é", r), Err(TopicError::BadChar { ch: 'é' }));
        assert_eq!(validate_topic("a*", r), Err(TopicError::BadChar { ch: '*' }));
    }
}
