//! What one connection may subscribe to and publish on, and the policy that derives it from
//! the configuration and a verified token.
//!
//! Default semantics (also in `docs/security.md`, "Identity and permissions"):
//! - **Open mode** (`PolicyConfig::open`: no JWT key configured) with both anonymous lists
//!   empty: anonymous connections may subscribe to and publish on every topic.
//! - Otherwise anonymous connections get exactly `anonymous_subscribe` and
//!   `anonymous_publish` (empty: nothing). `{sub}` in an anonymous pattern is a
//!   configuration error, reported by [`Policy::new`].
//! - A connection with a valid token gets the union of `authenticated_*` (with `{sub}` the
//!   token's `sub`) and the token's own `subscribe` / `publish` claims, read literally. It
//!   does *not* also get the anonymous lists.
//!
//! Costs: [`Policy::anonymous`] hands out one shared `Arc`; [`Policy::for_claims`] shares
//! the configured sets too when they hold no `{sub}` and the token carries no patterns for
//! that action, and otherwise compiles one merged trie per action for the connection (so a
//! check is still one pass over the topic). Checks run per subscribe or publish request,
//! never per delivery: nothing here is on the fan-out path.

use std::sync::Arc;

use crate::claims::Claims;
use crate::pattern::{PatternError, PatternSet, PatternSetBuilder, SubMode, MAX_PATTERN_LEN};

/// Most patterns a token may carry per action (`subscribe`, `publish`).
pub const MAX_TOKEN_PATTERNS: usize = 256;

/// The topic patterns one connection may subscribe to and publish on.
#[derive(Debug, Clone)]
pub struct Permissions {
    subscribe: Arc<PatternSet>,
    publish: Arc<PatternSet>,
}

impl Permissions {
    /// Builds permissions from two compiled sets.
    pub fn new(subscribe: Arc<PatternSet>, publish: Arc<PatternSet>) -> Self {
        Self { subscribe, publish }
    }

    /// Everything allowed (open mode). One shared instance.
    pub fn allow_all() -> Arc<Self> {
        static ALL: std::sync::OnceLock<Arc<Permissions>> = std::sync::OnceLock::new();
        ALL.get_or_init(|| {
            let all = Arc::new(PatternSet::everything());
            Arc::new(Permissions::new(all.clone(), all))
        })
        .clone()
    }

    /// True when nothing at all is allowed.
    pub fn allows_nothing(&self) -> bool {
        self.subscribe.is_empty() && self.publish.is_empty()
    }

    /// Nothing allowed. One shared instance.
    pub fn deny_all() -> Arc<Self> {
        static NONE: std::sync::OnceLock<Arc<Permissions>> = std::sync::OnceLock::new();
        NONE.get_or_init(|| {
            let none = Arc::new(PatternSet::empty());
            Arc::new(Permissions::new(none.clone(), none))
        })
        .clone()
    }

    /// May this connection subscribe to `topic` (a validated topic name)?
    pub fn can_subscribe(&self, topic: &str) -> bool {
        self.subscribe.matches(topic)
    }

    /// May this connection publish on `topic` (a validated topic name)?
    pub fn can_publish(&self, topic: &str) -> bool {
        self.publish.matches(topic)
    }

    /// The compiled subscribe set (e.g. to tell "may subscribe to nothing" apart).
    pub fn subscribe_set(&self) -> &Arc<PatternSet> {
        &self.subscribe
    }

    /// The compiled publish set (a raw connection that may publish nothing is read-only).
    pub fn publish_set(&self) -> &Arc<PatternSet> {
        &self.publish
    }
}

/// The configured lists a [`Policy`] is built from (the gateway maps its `[auth]` section
/// into this).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PolicyConfig {
    /// No JWT key is configured: with both anonymous lists empty, anonymous may do everything.
    pub open: bool,
    pub anonymous_subscribe: Vec<String>,
    pub anonymous_publish: Vec<String>,
    /// `{sub}` stands for the token's `sub`.
    pub authenticated_subscribe: Vec<String>,
    pub authenticated_publish: Vec<String>,
}

/// The configured patterns of one action for authenticated connections.
#[derive(Debug)]
struct Configured {
    /// The source patterns, merged with a token's own when it carries some.
    patterns: Vec<String>,
    /// Compiled once and shared by every connection when no pattern holds `{sub}`.
    shared: Option<Arc<PatternSet>>,
}

/// Permissions policy, built once from the configuration; cheap to share in an `Arc`.
#[derive(Debug)]
pub struct Policy {
    anonymous: Arc<Permissions>,
    subscribe: Configured,
    publish: Configured,
    /// Shared authenticated permissions when neither action needs `{sub}`.
    authenticated: Option<Arc<Permissions>>,
}

impl Policy {
    /// Compiles the configured lists; any bad pattern (or `{sub}` in an anonymous one) is
    /// an error naming it.
    pub fn new(cfg: &PolicyConfig) -> Result<Self, PatternError> {
        let anonymous = if cfg.open && cfg.anonymous_subscribe.is_empty() && cfg.anonymous_publish.is_empty() {
            Permissions::allow_all()
        } else {
            Arc::new(Permissions::new(
                Arc::new(PatternSet::compile(&cfg.anonymous_subscribe, None)?),
                Arc::new(PatternSet::compile(&cfg.anonymous_publish, None)?),
            ))
        };
        let subscribe = configured(&cfg.authenticated_subscribe)?;
        let publish = configured(&cfg.authenticated_publish)?;
        let authenticated = match (&subscribe.shared, &publish.shared) {
            (Some(s), Some(p)) => Some(Arc::new(Permissions::new(s.clone(), p.clone()))),
            _ => None,
        };
        Ok(Self {
            anonymous,
            subscribe,
            publish,
            authenticated,
        })
    }

    /// Permissions of a connection without a token: one shared instance, no allocation.
    pub fn anonymous(&self) -> Arc<Permissions> {
        self.anonymous.clone()
    }

    /// Permissions of a connection whose token was verified: `authenticated_*` with
    /// `{sub}` = `claims.sub`, plus the token's own patterns. Errors on a bad claimed
    /// pattern or more than [`MAX_TOKEN_PATTERNS`] per action (the verifier already
    /// refuses such tokens, so this is a second line).
    pub fn for_claims(&self, claims: &Claims) -> Result<Arc<Permissions>, PatternError> {
        if claims.subscribe.is_empty() && claims.publish.is_empty() {
            if let Some(shared) = &self.authenticated {
                return Ok(shared.clone());
            }
        }
        let subscribe = merge(&self.subscribe, &claims.subscribe, &claims.sub)?;
        let publish = merge(&self.publish, &claims.publish, &claims.sub)?;
        Ok(Arc::new(Permissions::new(subscribe, publish)))
    }
}

fn configured(patterns: &[String]) -> Result<Configured, PatternError> {
    let per_user = patterns.iter().any(|p| p.split('.').any(|s| s == "{sub}"));
    let shared = if per_user {
        // Check the grammar now, so a bad pattern fails at start, not at a connection.
        PatternSet::compile(patterns, Some("user"))?;
        None
    } else {
        Some(Arc::new(PatternSet::compile(patterns, None)?))
    };
    Ok(Configured {
        patterns: patterns.to_vec(),
        shared,
    })
}

/// Checks a token's pattern list against the caps (count, length) and the grammar.
pub fn check_token_patterns(patterns: &[String]) -> Result<(), PatternError> {
    if patterns.len() > MAX_TOKEN_PATTERNS {
        return Err(PatternError::TooMany {
            count: patterns.len(),
            max: MAX_TOKEN_PATTERNS,
        });
    }
    for p in patterns {
        if p.len() > MAX_PATTERN_LEN {
            return Err(PatternError::TooLong {
                len: p.len(),
                max: MAX_PATTERN_LEN,
            });
        }
        crate::pattern::parse(p)?;
    }
    Ok(())
}

/// One action's set for a connection: the shared configured set when it can be, else the
/// configured patterns (with `{sub}` = `sub`) and the token's (literal) in one trie.
fn merge(configured: &Configured, token: &[String], sub: &str) -> Result<Arc<PatternSet>, PatternError> {
    if token.len() > MAX_TOKEN_PATTERNS {
        return Err(PatternError::TooMany {
            count: token.len(),
            max: MAX_TOKEN_PATTERNS,
        });
    }
    if let Some(shared) = &configured.shared {
        if token.is_empty() || shared.matches_everything() {
            return Ok(shared.clone());
        }
    }
    let mut b = PatternSetBuilder::new();
    for p in &configured.patterns {
        b.add(p, SubMode::User(Some(sub)))?;
    }
    for p in token {
        if p.len() > MAX_PATTERN_LEN {
            return Err(PatternError::TooLong {
                len: p.len(),
                max: MAX_PATTERN_LEN,
            });
        }
        b.add(p, SubMode::Literal)?;
    }
    Ok(Arc::new(b.build()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(p: &[&str]) -> Vec<String> {
        p.iter().map(|s| s.to_string()).collect()
    }

    fn claims(sub: &str, subscribe: &[&str], publish: &[&str]) -> Claims {
        Claims {
            sub: sub.into(),
            exp_ms: None,
            subscribe: v(subscribe),
            publish: v(publish),
        }
    }

    #[test]
    fn open_mode_without_lists_allows_everything() {
        let p = Policy::new(&PolicyConfig {
            open: true,
            ..Default::default()
        })
        .unwrap();
        let a = p.anonymous();
        assert!(a.can_subscribe("x.y") && a.can_publish("anything"));
        assert!(Arc::ptr_eq(&a, &p.anonymous()), "shared, not rebuilt");
    }

    #[test]
    fn anonymous_lists_are_exact_in_open_and_closed_mode() {
        for open in [true, false] {
            let p = Policy::new(&PolicyConfig {
                open,
                anonymous_subscribe: v(&["public.>"]),
                ..Default::default()
            })
            .unwrap();
            let a = p.anonymous();
            assert!(a.can_subscribe("public.news"));
            assert!(!a.can_subscribe("private.x"));
            assert!(!a.can_publish("public.news"), "open={open}");
        }
        let closed = Policy::new(&PolicyConfig::default()).unwrap().anonymous();
        assert!(!closed.can_subscribe("a") && !closed.can_publish("a"));
    }

    #[test]
    fn sub_in_anonymous_pattern_is_a_config_error() {
        let e = Policy::new(&PolicyConfig {
            anonymous_publish: v(&["user.{sub}"]),
            ..Default::default()
        })
        .unwrap_err();
        assert!(matches!(e, PatternError::SubWithoutUser { .. }));
        let e = Policy::new(&PolicyConfig {
            authenticated_publish: v(&["user..x"]),
            ..Default::default()
        })
        .unwrap_err();
        assert!(matches!(e, PatternError::EmptySegment { .. }));
    }

    #[test]
    fn authenticated_is_union_of_config_and_token() {
        let p = Policy::new(&PolicyConfig {
            anonymous_subscribe: v(&["public.>"]),
            authenticated_subscribe: v(&["user.{sub}.>", "lobby"]),
            authenticated_publish: v(&["user.{sub}.out"]),
            ..Default::default()
        })
        .unwrap();
        let alice = p.for_claims(&claims("alice", &["game.42.*"], &["chat.{sub}"])).unwrap();
        assert!(alice.can_subscribe("user.alice.inbox") && alice.can_subscribe("lobby"));
        assert!(alice.can_subscribe("game.42.moves"));
        assert!(!alice.can_subscribe("user.bob.inbox"));
        assert!(!alice.can_subscribe("public.news"), "anonymous lists are not added");
        assert!(alice.can_publish("user.alice.out"));
        assert!(alice.can_publish("chat.{sub}"), "a token's {{sub}} is literal");
        assert!(!alice.can_publish("chat.alice"));
        let bob = p.for_claims(&claims("bob", &[], &[])).unwrap();
        assert!(bob.can_subscribe("user.bob.x") && !bob.can_subscribe("user.alice.x"));
    }

    #[test]
    fn shared_sets_are_not_recompiled() {
        let p = Policy::new(&PolicyConfig {
            authenticated_subscribe: v(&["lobby.*"]),
            ..Default::default()
        })
        .unwrap();
        let a = p.for_claims(&claims("a", &[], &[])).unwrap();
        let b = p.for_claims(&claims("b", &[], &[])).unwrap();
        assert!(Arc::ptr_eq(&a, &b));
        let c = p.for_claims(&claims("c", &[], &["out.c"])).unwrap();
        assert!(Arc::ptr_eq(a.subscribe_set(), c.subscribe_set()));
        assert!(c.can_publish("out.c") && !a.can_publish("out.c"));
    }

    #[test]
    fn token_caps_are_errors() {
        let p = Policy::new(&PolicyConfig::default()).unwrap();
        let many: Vec<String> = (0..=MAX_TOKEN_PATTERNS).map(|i| format!("t{i}")).collect();
        let c = Claims {
            sub: "u".into(),
            exp_ms: None,
            subscribe: many.clone(),
            publish: vec![],
        };
        assert!(matches!(p.for_claims(&c), Err(PatternError::TooMany { .. })));
        assert!(check_token_patterns(&many).is_err());
        assert!(check_token_patterns(&many[..MAX_TOKEN_PATTERNS]).is_ok());
        assert!(check_token_patterns(&["x".repeat(MAX_PATTERN_LEN + 1)]).is_err());
        assert!(check_token_patterns(&["a.>.b".to_string()]).is_err());
    }

    #[test]
    fn allow_and_deny_all() {
        assert!(Permissions::allow_all().can_publish("a.b"));
        assert!(!Permissions::deny_all().can_subscribe("a"));
        assert!(Arc::ptr_eq(&Permissions::deny_all(), &Permissions::deny_all()));
    }
}
