//! Topic patterns and the compiled matcher every permission check goes through.
//!
//! Grammar (the "Contract, wave 2" one): a pattern is `.`-separated segments, each of them
//! - a literal made of the bytes a topic name may hold (`herald_protocol::topic`), matched
//!   exactly against one topic segment;
//! - `*`, exactly one topic segment (whatever it holds, an empty one included);
//! - `>`, one or more trailing segments, allowed only as the last segment;
//! - `{sub}` (the whole segment), in *configured* patterns only: the connection's user id,
//!   matched literally against one segment (a user id holding `.`, `*` or `>` is never
//!   read as a wildcard and so simply never matches). In a token's own claims `{sub}` is
//!   an ordinary literal: [`SubMode::Literal`].
//!
//! Empty segments (`a..b`, a leading or trailing `.`), a wildcard inside a segment (`a*`),
//! `>` anywhere but last, and patterns over [`MAX_PATTERN_LEN`] bytes are refused.
//!
//! A [`PatternSet`] compiles any number of patterns into a segment trie; matching walks
//! the topic's segments once, keeping the set of live trie nodes (each live node has its
//! own path, so the set holds no duplicates and never outgrows the trie level). The cost
//! is one pass over the topic whatever the number of patterns, and matching never
//! allocates for sets up to 16 live nodes per level, nor formats strings (`{sub}` is
//! substituted when the set is built). Topic *validation* is not done here: callers pass
//! topics that already passed `validate_topic`.

use smallvec::SmallVec;
use thiserror::Error;

/// Longest pattern accepted, in bytes: the ceiling `limits.max_topic_length` may be set to.
pub const MAX_PATTERN_LEN: usize = 1024;

/// Why a pattern was refused. The `Display` text may be shown to a client (it names the
/// pattern, never a secret).
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum PatternError {
    #[error("topic pattern is empty")]
    Empty,
    #[error("topic pattern is {len} bytes, the limit is {max}")]
    TooLong { len: usize, max: usize },
    #[error("topic pattern {pattern:?} has an empty segment")]
    EmptySegment { pattern: String },
    #[error("topic pattern {pattern:?}: '>' may only be the last segment")]
    GreaterNotLast { pattern: String },
    #[error("topic pattern {pattern:?}: '*' and '>' must be whole segments")]
    PartialWildcard { pattern: String },
    #[error("topic pattern {pattern:?} contains {ch:?}; allowed are ASCII letters, digits, _ - : / @ = {{ }} and the wildcards * and >")]
    BadChar { pattern: String, ch: char },
    #[error(
        "topic pattern {pattern:?} uses {{sub}}, which needs an authenticated user (not allowed in anonymous patterns)"
    )]
    SubWithoutUser { pattern: String },
    #[error("user id is empty, so {{sub}} cannot be substituted")]
    EmptyUser,
    #[error("{count} topic patterns given, the limit is {max}")]
    TooMany { count: usize, max: usize },
}

/// How a `{sub}` segment is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SubMode<'a> {
    /// Configured patterns: `{sub}` is this user id; `None` (anonymous) refuses `{sub}`.
    User(Option<&'a str>),
    /// A token's own claims: `{sub}` is the literal text `{sub}`.
    Literal,
}

/// One parsed segment of a pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Segment<'a> {
    Literal(&'a str),
    Star,
    Greater,
    Sub,
}

/// Parses `pattern` into segments, checking the grammar (not `{sub}` permissions: a
/// `Segment::Sub` is returned and the caller decides).
pub fn parse(pattern: &str) -> Result<SmallVec<[Segment<'_>; 8]>, PatternError> {
    if pattern.is_empty() {
        return Err(PatternError::Empty);
    }
    if pattern.len() > MAX_PATTERN_LEN {
        return Err(PatternError::TooLong {
            len: pattern.len(),
            max: MAX_PATTERN_LEN,
        });
    }
    let owned = || pattern.to_owned();
    let mut out = SmallVec::new();
    let mut parts = pattern.split('.').peekable();
    while let Some(seg) = parts.next() {
        let last = parts.peek().is_none();
        let s = match seg {
            "" => return Err(PatternError::EmptySegment { pattern: owned() }),
            "*" => Segment::Star,
            ">" if last => Segment::Greater,
            ">" => return Err(PatternError::GreaterNotLast { pattern: owned() }),
            "{sub}" => Segment::Sub,
            lit => {
                if let Some(b) = lit.bytes().find(|b| !herald_protocol::topic::is_topic_byte(*b)) {
                    if b == b'*' || b == b'>' {
                        return Err(PatternError::PartialWildcard { pattern: owned() });
                    }
                    let ch = lit
                        .chars()
                        .find(|c| !c.is_ascii() || !herald_protocol::topic::is_topic_byte(*c as u8))
                        .unwrap_or('?');
                    return Err(PatternError::BadChar { pattern: owned(), ch });
                }
                Segment::Literal(lit)
            }
        };
        out.push(s);
    }
    Ok(out)
}

/// Index of a trie node in [`PatternSet::nodes`].
type NodeId = u32;

#[derive(Debug, Clone, Default)]
struct Node {
    /// Literal children, sorted by segment for a binary search.
    literals: Vec<(Box<str>, NodeId)>,
    /// The `*` child.
    star: Option<NodeId>,
    /// A pattern ends here with `>`: any topic with at least one more segment matches.
    greater: bool,
    /// A pattern ends exactly here.
    end: bool,
}

/// A compiled set of patterns: matches a topic in one pass, whatever the number of
/// patterns. Immutable once built; share it in an `Arc`.
#[derive(Debug, Clone)]
pub struct PatternSet {
    nodes: Vec<Node>,
    /// Some pattern matches every topic (`>`, or `*` with `*.>`): `matches` answers at once.
    everything: bool,
    /// Number of patterns compiled in (duplicates included).
    len: usize,
}

impl Default for PatternSet {
    fn default() -> Self {
        Self::empty()
    }
}

impl PatternSet {
    /// Sets `everything` when the root holds `>`, or `*` together with `*.>`.
    fn note_everything(&mut self) {
        let root = &self.nodes[0];
        let star_all = root.star.is_some_and(|s| {
            let s = &self.nodes[s as usize];
            s.end && s.greater
        });
        if root.greater || star_all {
            self.everything = true;
        }
    }

    /// The set that matches nothing.
    pub fn empty() -> Self {
        Self {
            nodes: vec![Node::default()],
            everything: false,
            len: 0,
        }
    }

    /// The set that matches every topic (open mode).
    pub fn everything() -> Self {
        let mut s = Self::empty();
        s.nodes[0].greater = true;
        s.everything = true;
        s.len = 1;
        s
    }

    /// Compiles configured patterns: `{sub}` is `sub` (the connection's user id), and with
    /// `sub = None` (anonymous) a `{sub}` pattern is an error.
    pub fn compile<S: AsRef<str>>(patterns: &[S], sub: Option<&str>) -> Result<Self, PatternError> {
        let mut b = PatternSetBuilder::new();
        for p in patterns {
            b.add(p.as_ref(), SubMode::User(sub))?;
        }
        Ok(b.build())
    }

    /// Compiles a token's own patterns: `{sub}` is taken literally.
    pub fn compile_literal<S: AsRef<str>>(patterns: &[S]) -> Result<Self, PatternError> {
        let mut b = PatternSetBuilder::new();
        for p in patterns {
            b.add(p.as_ref(), SubMode::Literal)?;
        }
        Ok(b.build())
    }

    /// True when no pattern was compiled in: nothing matches.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// True when every topic matches (the set holds `>` or an equivalent).
    pub fn matches_everything(&self) -> bool {
        self.everything
    }

    /// True when some pattern of the set matches `topic`. One pass over the topic's
    /// segments; no allocation unless more than 16 trie nodes are live at once.
    pub fn matches(&self, topic: &str) -> bool {
        if self.everything {
            return true;
        }
        if self.len == 0 {
            return false;
        }
        let mut live: SmallVec<[NodeId; 16]> = SmallVec::new();
        let mut next: SmallVec<[NodeId; 16]> = SmallVec::new();
        live.push(0);
        for seg in topic.split('.') {
            next.clear();
            for &id in &live {
                let node = &self.nodes[id as usize];
                if node.greater {
                    // `>` takes this segment and whatever follows.
                    return true;
                }
                if let Ok(i) = node.literals.binary_search_by(|(k, _)| (**k).cmp(seg)) {
                    next.push(node.literals[i].1);
                }
                if let Some(s) = node.star {
                    next.push(s);
                }
            }
            if next.is_empty() {
                return false;
            }
            std::mem::swap(&mut live, &mut next);
        }
        live.iter().any(|&id| self.nodes[id as usize].end)
    }
}

/// Builds a [`PatternSet`] from patterns read in different [`SubMode`]s (a connection's
/// configured patterns with its user id, plus its token's literal ones).
#[derive(Debug, Default)]
pub struct PatternSetBuilder {
    set: Option<PatternSet>,
}

impl PatternSetBuilder {
    pub fn new() -> Self {
        Self {
            set: Some(PatternSet::empty()),
        }
    }

    /// Parses and inserts one pattern.
    pub fn add(&mut self, pattern: &str, mode: SubMode<'_>) -> Result<&mut Self, PatternError> {
        let segs = parse(pattern)?;
        let set = self.set.get_or_insert_with(PatternSet::empty);
        let mut cur: NodeId = 0;
        for seg in &segs {
            let lit: &str = match seg {
                Segment::Greater => {
                    set.nodes[cur as usize].greater = true;
                    set.len += 1;
                    set.note_everything();
                    return Ok(self);
                }
                Segment::Star => {
                    cur = match set.nodes[cur as usize].star {
                        Some(s) => s,
                        None => {
                            let id = push_node(&mut set.nodes);
                            set.nodes[cur as usize].star = Some(id);
                            id
                        }
                    };
                    continue;
                }
                Segment::Literal(l) => l,
                Segment::Sub => match mode {
                    SubMode::Literal => "{sub}",
                    SubMode::User(Some("")) => return Err(PatternError::EmptyUser),
                    SubMode::User(Some(u)) => u,
                    SubMode::User(None) => {
                        return Err(PatternError::SubWithoutUser {
                            pattern: pattern.to_owned(),
                        })
                    }
                },
            };
            let node = &set.nodes[cur as usize];
            cur = match node.literals.binary_search_by(|(k, _)| (**k).cmp(lit)) {
                Ok(i) => node.literals[i].1,
                Err(i) => {
                    let id = push_node(&mut set.nodes);
                    set.nodes[cur as usize].literals.insert(i, (lit.into(), id));
                    id
                }
            };
        }
        set.nodes[cur as usize].end = true;
        set.len += 1;
        set.note_everything();
        Ok(self)
    }

    /// The compiled set.
    pub fn build(&mut self) -> PatternSet {
        self.set.take().unwrap_or_default()
    }
}

fn push_node(nodes: &mut Vec<Node>) -> NodeId {
    nodes.push(Node::default());
    (nodes.len() - 1) as NodeId
}

/// The reference matcher the trie is tested against: one pattern, segment by segment.
#[doc(hidden)]
pub fn naive_match(pattern: &str, sub: Option<&str>, topic: &str) -> bool {
    let Ok(segs) = parse(pattern) else {
        return false;
    };
    let topic: Vec<&str> = topic.split('.').collect();
    for (i, seg) in segs.iter().enumerate() {
        match seg {
            Segment::Greater => return topic.len() > i,
            _ if i >= topic.len() => return false,
            Segment::Star => {}
            Segment::Literal(l) if *l == topic[i] => {}
            Segment::Sub if sub == Some(topic[i]) => {}
            _ => return false,
        }
    }
    segs.len() == topic.len()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn set(p: &[&str]) -> PatternSet {
        PatternSet::compile(p, None).unwrap()
    }

    #[test]
    fn literals_stars_and_greater() {
        let s = set(&["chat.*", "sensor.>", "prices", "a.*.c"]);
        for t in [
            "chat.room1",
            "sensor.a",
            "sensor.a.b.c",
            "prices",
            "a.b.c",
            "a..c",
            "chat.",
        ] {
            assert!(s.matches(t), "{t}");
        }
        for t in ["chat", "chat.a.b", "sensor", "prices.x", "price", "a.b", "a.b.c.d", "x"] {
            assert!(!s.matches(t), "{t}");
        }
        assert!(!s.is_empty());
        assert!(!s.matches_everything());
    }

    #[test]
    fn empty_set_matches_nothing_and_greater_everything() {
        let e = PatternSet::compile::<&str>(&[], None).unwrap();
        assert!(e.is_empty() && !e.matches("a"));
        let all = set(&[">"]);
        assert!(all.matches_everything() && all.matches("a") && all.matches("a.b.c"));
        assert!(set(&["*", "*.>"]).matches_everything());
        assert!(!set(&["*"]).matches_everything());
        assert!(!set(&["*.>"]).matches_everything());
        assert!(PatternSet::everything().matches("x.y"));
    }

    #[test]
    fn sub_is_substituted_literally() {
        let s = PatternSet::compile(&["user.{sub}.>", "inbox.{sub}"], Some("alice")).unwrap();
        assert!(s.matches("user.alice.x") && s.matches("inbox.alice"));
        assert!(!s.matches("user.bob.x") && !s.matches("inbox.{sub}"));
        // A user id that looks like a wildcard is a literal; one with a dot matches nothing.
        let s = PatternSet::compile(&["inbox.{sub}"], Some(">")).unwrap();
        assert!(!s.matches("inbox.x") && s.matches("inbox.>"));
        let s = PatternSet::compile(&["inbox.{sub}"], Some("a.b")).unwrap();
        assert!(!s.matches("inbox.a.b") && !s.matches("inbox.a"));
        assert_eq!(
            PatternSet::compile(&["inbox.{sub}"], None).unwrap_err(),
            PatternError::SubWithoutUser {
                pattern: "inbox.{sub}".into()
            }
        );
        assert_eq!(
            PatternSet::compile(&["inbox.{sub}"], Some("")).unwrap_err(),
            PatternError::EmptyUser
        );
        let lit = PatternSet::compile_literal(&["inbox.{sub}"]).unwrap();
        assert!(lit.matches("inbox.{sub}") && !lit.matches("inbox.alice"));
        // `{sub}` only as a whole segment; otherwise literal braces (topics may hold them).
        let s = PatternSet::compile(&["{g17}:room.{subx}"], None).unwrap();
        assert!(s.matches("{g17}:room.{subx}"));
    }

    #[test]
    fn grammar_errors() {
        let e = |p: &str| PatternSet::compile(&[p], Some("u")).unwrap_err();
        assert_eq!(e(""), PatternError::Empty);
        assert!(matches!(e("a..b"), PatternError::EmptySegment { .. }));
        assert!(matches!(e(".a"), PatternError::EmptySegment { .. }));
        assert!(matches!(e("a."), PatternError::EmptySegment { .. }));
        assert!(matches!(e("a.>.b"), PatternError::GreaterNotLast { .. }));
        assert!(matches!(e("a*"), PatternError::PartialWildcard { .. }));
        assert!(matches!(e("a.b>"), PatternError::PartialWildcard { .. }));
        assert!(matches!(e("a b"), PatternError::BadChar { ch: ' ', .. }));
        assert!(matches!(e("caf\u{e9}"), PatternError::BadChar { ch: '\u{e9}', .. }));
        let long = "a".repeat(MAX_PATTERN_LEN + 1);
        assert!(matches!(e(&long), PatternError::TooLong { .. }));
        assert!(PatternSet::compile(&["a".repeat(MAX_PATTERN_LEN)], None).is_ok());
    }

    fn seg() -> impl Strategy<Value = String> {
        prop_oneof![
            4 => prop::sample::select(vec!["a", "b", "c", "ab"]).prop_map(String::from),
            2 => Just("*".to_string()),
            1 => Just("{sub}".to_string()),
        ]
    }

    fn pattern() -> impl Strategy<Value = String> {
        (prop::collection::vec(seg(), 1..5), any::<bool>()).prop_map(|(mut v, gt)| {
            if gt {
                v.push(">".into());
            }
            v.join(".")
        })
    }

    fn topic() -> impl Strategy<Value = String> {
        prop::collection::vec(prop::sample::select(vec!["a", "b", "c", "ab", "u", "", "{sub}"]), 1..7)
            .prop_map(|v| v.join("."))
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]
        #[test]
        fn trie_agrees_with_naive(patterns in prop::collection::vec(pattern(), 0..12), topics in prop::collection::vec(topic(), 1..12)) {
            let s = PatternSet::compile(&patterns, Some("u")).unwrap();
            for t in &topics {
                let naive = patterns.iter().any(|p| naive_match(p, Some("u"), t));
                prop_assert_eq!(s.matches(t), naive, "patterns {:?} topic {:?}", patterns, t);
            }
            if s.matches_everything() {
                for t in &topics {
                    prop_assert!(patterns.iter().any(|p| naive_match(p, Some("u"), t)));
                }
            }
        }

        #[test]
        fn parse_never_panics(p in ".{0,40}") {
            let _ = PatternSet::compile(&[p.as_str()], Some("u"));
            let _ = PatternSet::compile_literal(&[p.as_str()]);
        }
    }
}
