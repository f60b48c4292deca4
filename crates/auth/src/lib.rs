//! Herald identity and permissions, as a pure library (no sockets, no gateway types):
//! - [`pattern`]: the topic pattern grammar and a one-pass trie matcher ([`PatternSet`]);
//! - [`permissions`]: what a connection may subscribe to and publish on ([`Permissions`]),
//!   derived by a [`Policy`] from the configured lists and a token's claims;
//! - [`keys`], [`verifier`], [`claims`]: JWT verification against operator-configured keys
//!   (HS secret, PEM public key, JWKS), with pinned algorithms and atomic key reloads.
//!
//! The gateway maps its `[auth]` section into [`KeyConfig`] and [`PolicyConfig`], builds one
//! [`Verifier`] and one [`Policy`] at start, and asks them once per connection (or per
//! `auth`/`refresh` op) and once per subscribe/publish request, never per delivery.

pub mod claims;
pub mod keys;
pub mod pattern;
pub mod permissions;
pub mod verifier;

pub use claims::{Claims, MAX_SUB_LEN};
pub use keys::{KeyConfig, KeyError, MIN_HS_SECRET_LEN};
pub use pattern::{PatternError, PatternSet, PatternSetBuilder, SubMode, MAX_PATTERN_LEN};
pub use permissions::{Permissions, Policy, PolicyConfig, MAX_TOKEN_PATTERNS};
pub use verifier::{AuthError, Verifier, MAX_TOKEN_LEN};
