//! Decoding JSON protocol v1 requests (client to node).
//!
//! A request is one JSON object per text frame with an `op` and, depending on it, `topics`,
//! `topic`, `data` and an optional `id` (a number or a string, echoed verbatim). Decoding
//! borrows from the frame: `data` stays the publisher's JSON text (validated, never
//! re-serialised) and topic names are borrowed unless they contain JSON escapes. Unknown
//! fields are ignored so clients can send newer fields to older nodes.
//!
//! Errors keep the `id` when it could be read, so the answer can echo it. Limits that
//! depend on the connection (how many subscriptions) are checked by the gateway.

use std::borrow::Cow;

use serde::de::{self, Deserializer, Visitor};
use serde::Deserialize;
use serde_json::value::RawValue;

use crate::envelope::StreamPos;
use crate::server_msg::ErrorCode;
use crate::topic::{validate_topic, TopicRules};

/// The raw JSON text of a request's `id` (a number like `7` or a string like `"a"`), echoed
/// byte for byte in the answer.
pub type RequestId<'a> = &'a str;

/// A decoded, validated request.
#[derive(Debug, PartialEq, Eq)]
pub enum ClientRequest<'a> {
    Subscribe {
        topics: Vec<Cow<'a, str>>,
        /// `since`: per topic (each one of `topics`), the position the client has seen up
        /// to; messages after it are replayed (history topics). Empty when absent.
        since: Vec<(Cow<'a, str>, StreamPos)>,
        id: Option<RequestId<'a>>,
    },
    Unsubscribe {
        topics: Vec<Cow<'a, str>>,
        id: Option<RequestId<'a>>,
    },
    /// `data` is the JSON text of the value to publish.
    Publish {
        topic: Cow<'a, str>,
        data: &'a str,
        id: Option<RequestId<'a>>,
    },
    Ping {
        id: Option<RequestId<'a>>,
    },
    /// `{"op":"pong"}`: a client's answer to a JSON heartbeat (`{"type":"ping"}`, on
    /// `/ws?heartbeat=json`). Never answered, whatever `id` it carries.
    Pong,
    /// `{"op":"auth","token":".."}`: the connection's first token (keeps it out of URLs and
    /// so out of proxy access logs).
    Auth {
        token: Cow<'a, str>,
        id: Option<RequestId<'a>>,
    },
    /// `{"op":"refresh","token":".."}`: a new token for the same user before the current one
    /// expires.
    Refresh {
        token: Cow<'a, str>,
        id: Option<RequestId<'a>>,
    },
}

impl<'a> ClientRequest<'a> {
    pub fn id(&self) -> Option<RequestId<'a>> {
        match self {
            Self::Subscribe { id, .. }
            | Self::Unsubscribe { id, .. }
            | Self::Publish { id, .. }
            | Self::Ping { id }
            | Self::Auth { id, .. }
            | Self::Refresh { id, .. } => *id,
            Self::Pong => None,
        }
    }
}

/// A request that could not be accepted, with what to answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestError<'a> {
    pub id: Option<RequestId<'a>>,
    pub code: ErrorCode,
    pub message: String,
}

impl<'a> RequestError<'a> {
    fn new(id: Option<RequestId<'a>>, code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            id,
            code,
            message: message.into(),
        }
    }
}

#[derive(Deserialize)]
struct Wire<'a> {
    #[serde(borrow, default, deserialize_with = "present")]
    op: Option<&'a RawValue>,
    #[serde(borrow, default, deserialize_with = "present")]
    id: Option<&'a RawValue>,
    #[serde(borrow, default, deserialize_with = "present")]
    topic: Option<&'a RawValue>,
    #[serde(borrow, default, deserialize_with = "present")]
    topics: Option<&'a RawValue>,
    #[serde(borrow, default, deserialize_with = "present")]
    data: Option<&'a RawValue>,
    #[serde(borrow, default, deserialize_with = "present")]
    token: Option<&'a RawValue>,
    #[serde(borrow, default, deserialize_with = "present")]
    since: Option<&'a RawValue>,
}

/// One entry of `since`: `{"offset": N, "epoch": "E"}`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct WirePos {
    offset: u64,
    epoch: String,
}

/// Distinguishes a field that is present (even as `null`) from an absent one.
pub(crate) fn present<'de, D: Deserializer<'de>>(d: D) -> Result<Option<&'de RawValue>, D::Error> {
    <&'de RawValue>::deserialize(d).map(Some)
}

/// `since` as its entries, in the order sent (a map would hide a repeated key).
struct SinceMap<'a>(Vec<(Name<'a>, WirePos)>);

impl<'de> Deserialize<'de> for SinceMap<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = SinceMap<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("an object")
            }
            fn visit_map<A: de::MapAccess<'de>>(self, mut m: A) -> Result<Self::Value, A::Error> {
                let mut out = Vec::new();
                while let Some((k, v)) = m.next_entry::<Name<'de>, WirePos>()? {
                    out.push((k, v));
                }
                Ok(SinceMap(out))
            }
        }
        d.deserialize_map(V)
    }
}

/// A topic name borrowed from the frame when it has no escapes.
struct Name<'a>(Cow<'a, str>);

impl<'de> Deserialize<'de> for Name<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Name<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(Name(Cow::Borrowed(v)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(Name(Cow::Owned(v.to_owned())))
            }
        }
        d.deserialize_str(V)
    }
}

/// Decodes and validates one request frame. `text` is the frame's (UTF-8) payload.
pub fn decode_request(text: &[u8], rules: TopicRules) -> Result<ClientRequest<'_>, RequestError<'_>> {
    let first = text.iter().find(|b| !b.is_ascii_whitespace());
    if first.is_some() && first != Some(&b'{') {
        // serde would happily read a struct from an array; the protocol says object.
        return match serde_json::from_slice::<&RawValue>(text) {
            Ok(_) => Err(RequestError::new(
                None,
                ErrorCode::InvalidMessage,
                "a request must be a JSON object",
            )),
            Err(e) => Err(RequestError::new(
                None,
                ErrorCode::InvalidJson,
                format!("invalid JSON: {e}"),
            )),
        };
    }
    let wire: Wire<'_> = match serde_json::from_slice(text) {
        Ok(w) => w,
        Err(e) if e.is_data() => {
            // serde stops at the first error, and a data error (a duplicate field) can come
            // before a syntax error further on (found by fuzzing): text that is not JSON is
            // answered as such, whatever serde met first.
            if let Err(syntax) = serde_json::from_slice::<serde::de::IgnoredAny>(text) {
                return Err(RequestError::new(
                    None,
                    ErrorCode::InvalidJson,
                    format!("invalid JSON: {syntax}"),
                ));
            }
            return Err(RequestError::new(
                None,
                ErrorCode::InvalidMessage,
                format!("malformed request: {e}"),
            ));
        }
        Err(e) => {
            return Err(RequestError::new(
                None,
                ErrorCode::InvalidJson,
                format!("invalid JSON: {e}"),
            ))
        }
    };

    let id = match wire.id {
        None => None,
        Some(raw) => {
            let s = raw.get();
            let ok = s.starts_with('"') || s.starts_with('-') || s.as_bytes()[0].is_ascii_digit();
            if !ok {
                return Err(RequestError::new(
                    None,
                    ErrorCode::InvalidField,
                    "`id` must be a number or a string",
                ));
            }
            Some(s)
        }
    };
    let err = |code, msg: String| Err(RequestError::new(id, code, msg));

    let op: &str = match wire.op {
        None => return err(ErrorCode::MissingField, "missing field `op`".into()),
        Some(raw) => match serde_json::from_str::<Name<'_>>(raw.get()) {
            Ok(Name(Cow::Borrowed(s))) => s,
            _ => return err(ErrorCode::InvalidField, "`op` must be a string".into()),
        },
    };

    match op {
        "subscribe" | "unsubscribe" => {
            let Some(raw) = wire.topics else {
                return err(ErrorCode::MissingField, format!("missing field `topics` for `{op}`"));
            };
            let topics: Vec<Name<'_>> = match serde_json::from_str(raw.get()) {
                Ok(t) => t,
                Err(_) => return err(ErrorCode::InvalidField, "`topics` must be an array of strings".into()),
            };
            if topics.is_empty() {
                return err(ErrorCode::InvalidField, "`topics` must not be empty".into());
            }
            let mut out = Vec::with_capacity(topics.len());
            for Name(t) in topics {
                if let Err(e) = validate_topic(&t, rules) {
                    return err(ErrorCode::InvalidTopic, format!("invalid topic {t:?}: {e}"));
                }
                out.push(t);
            }
            let since = match (op, wire.since) {
                ("subscribe", Some(raw)) => {
                    let map: Vec<(Name<'_>, WirePos)> = match serde_json::from_str::<SinceMap<'_>>(raw.get()) {
                        Ok(m) => m.0,
                        Err(_) => {
                            return err(
                                ErrorCode::InvalidField,
                                "`since` must be an object of {\"offset\": <u64>, \"epoch\": <string>} by topic".into(),
                            )
                        }
                    };
                    let mut since = Vec::with_capacity(map.len());
                    for (Name(t), p) in map {
                        if !out.contains(&t) {
                            return err(
                                ErrorCode::InvalidField,
                                format!("`since` names {t:?}, which is not among `topics`"),
                            );
                        }
                        if p.epoch.len() > 255 {
                            return err(ErrorCode::InvalidField, "an epoch is at most 255 bytes".into());
                        }
                        if since.iter().any(|(s, _): &(Cow<'_, str>, StreamPos)| *s == t) {
                            return err(ErrorCode::InvalidField, format!("`since` names {t:?} twice"));
                        }
                        since.push((
                            t,
                            StreamPos {
                                offset: p.offset,
                                epoch: p.epoch,
                            },
                        ));
                    }
                    since
                }
                _ => Vec::new(),
            };
            Ok(if op == "subscribe" {
                ClientRequest::Subscribe { topics: out, since, id }
            } else {
                ClientRequest::Unsubscribe { topics: out, id }
            })
        }
        "publish" => {
            let Some(raw_topic) = wire.topic else {
                return err(ErrorCode::MissingField, "missing field `topic` for `publish`".into());
            };
            let Ok(Name(topic)) = serde_json::from_str::<Name<'_>>(raw_topic.get()) else {
                return err(ErrorCode::InvalidField, "`topic` must be a string".into());
            };
            if let Err(e) = validate_topic(&topic, rules) {
                return err(ErrorCode::InvalidTopic, format!("invalid topic {topic:?}: {e}"));
            }
            let Some(data) = wire.data else {
                return err(ErrorCode::MissingField, "missing field `data` for `publish`".into());
            };
            Ok(ClientRequest::Publish {
                topic,
                data: data.get(),
                id,
            })
        }
        "ping" => Ok(ClientRequest::Ping { id }),
        "pong" => Ok(ClientRequest::Pong),
        "auth" | "refresh" => {
            let Some(raw) = wire.token else {
                return err(ErrorCode::MissingField, format!("missing field `token` for `{op}`"));
            };
            let token = match serde_json::from_str::<Name<'_>>(raw.get()) {
                Ok(Name(t)) if !t.is_empty() => t,
                _ => return err(ErrorCode::InvalidField, "`token` must be a non-empty string".into()),
            };
            Ok(if op == "auth" {
                ClientRequest::Auth { token, id }
            } else {
                ClientRequest::Refresh { token, id }
            })
        }
        other => {
            let shown: String = other.chars().take(32).collect();
            err(
                ErrorCode::UnknownOp,
                format!("unknown op {shown:?}; expected subscribe, unsubscribe, publish, ping, pong, auth or refresh"),
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dec(s: &str) -> Result<ClientRequest<'_>, RequestError<'_>> {
        decode_request(s.as_bytes(), TopicRules::default())
    }

    #[test]
    fn decodes_every_op() {
        assert_eq!(
            dec(r#"{"op":"subscribe","topics":["a","b"],"id":1}"#).unwrap(),
            ClientRequest::Subscribe {
                topics: vec!["a".into(), "b".into()],
                since: vec![],
                id: Some("1")
            }
        );
        assert_eq!(
            dec(r#"{"op":"subscribe","topics":["a","b"],"since":{"b":{"offset":41,"epoch":"e1"}},"id":1}"#).unwrap(),
            ClientRequest::Subscribe {
                topics: vec!["a".into(), "b".into()],
                since: vec![(
                    "b".into(),
                    StreamPos {
                        offset: 41,
                        epoch: "e1".into()
                    }
                )],
                id: Some("1")
            }
        );
        for bad in [
            r#"{"op":"subscribe","topics":["a"],"since":{"c":{"offset":1,"epoch":"e"}},"id":2}"#,
            r#"{"op":"subscribe","topics":["a"],"since":{"a":{"offset":-1,"epoch":"e"}},"id":2}"#,
            r#"{"op":"subscribe","topics":["a"],"since":{"a":{"offset":1}},"id":2}"#,
            r#"{"op":"subscribe","topics":["a"],"since":{"a":{"offset":1,"epoch":"e","x":1}},"id":2}"#,
            r#"{"op":"subscribe","topics":["a"],"since":[1],"id":2}"#,
            r#"{"op":"subscribe","topics":["a"],"since":{"a":{"offset":1,"epoch":"e"},"a":{"offset":2,"epoch":"e"}},"id":2}"#,
        ] {
            let e = dec(bad).unwrap_err();
            assert_eq!((e.code, e.id), (ErrorCode::InvalidField, Some("2")), "{bad}");
        }
        let long = format!(
            r#"{{"op":"subscribe","topics":["a"],"since":{{"a":{{"offset":1,"epoch":"{}"}}}}}}"#,
            "e".repeat(256)
        );
        assert_eq!(dec(&long).unwrap_err().code, ErrorCode::InvalidField);
        assert_eq!(
            dec(r#"{"op":"unsubscribe","topics":["a"],"id":"x"}"#).unwrap(),
            ClientRequest::Unsubscribe {
                topics: vec!["a".into()],
                id: Some("\"x\"")
            }
        );
        assert_eq!(
            dec(r#"{"op":"publish","topic":"a","data":{"k":[1,2]},"id":3}"#).unwrap(),
            ClientRequest::Publish {
                topic: "a".into(),
                data: r#"{"k":[1,2]}"#,
                id: Some("3")
            }
        );
        assert_eq!(dec(r#" {"op":"ping"} "#).unwrap(), ClientRequest::Ping { id: None });
        assert_eq!(dec(r#"{"op":"pong"}"#).unwrap(), ClientRequest::Pong);
        assert_eq!(
            dec(r#"{"op":"pong","id":4}"#).unwrap().id(),
            None,
            "a pong is never answered"
        );
        assert_eq!(
            dec(r#"{"op":"auth","token":"a.b.c","id":5}"#).unwrap(),
            ClientRequest::Auth {
                token: "a.b.c".into(),
                id: Some("5")
            }
        );
        assert_eq!(
            dec(r#"{"op":"refresh","token":"x.y.z"}"#).unwrap(),
            ClientRequest::Refresh {
                token: "x.y.z".into(),
                id: None
            }
        );
        assert_eq!(
            dec(r#"{"op":"publish","topic":"a","data":null}"#).unwrap(),
            ClientRequest::Publish {
                topic: "a".into(),
                data: "null",
                id: None
            }
        );
        // Escapes in a topic are decoded, then validated.
        assert_eq!(
            dec(r#"{"op":"subscribe","topics":["\u0061"]}"#).unwrap(),
            ClientRequest::Subscribe {
                topics: vec!["a".into()],
                since: vec![],
                id: None
            }
        );
    }

    #[test]
    fn errors_are_typed_and_keep_the_id() {
        let code = |s: &str| dec(s).unwrap_err().code;
        assert_eq!(code("{"), ErrorCode::InvalidJson);
        assert_eq!(code("not json"), ErrorCode::InvalidJson);
        assert_eq!(code("[1,2]"), ErrorCode::InvalidMessage);
        assert_eq!(code("42"), ErrorCode::InvalidMessage);
        assert_eq!(code(r#"{"id":1}"#), ErrorCode::MissingField);
        assert_eq!(code(r#"{"op":5}"#), ErrorCode::InvalidField);
        assert_eq!(code(r#"{"op":"subscribe","topics":"a"}"#), ErrorCode::InvalidField);
        assert_eq!(code(r#"{"op":"subscribe","topics":[]}"#), ErrorCode::InvalidField);
        assert_eq!(code(r#"{"op":"subscribe","topics":[1]}"#), ErrorCode::InvalidField);
        assert_eq!(code(r#"{"op":"subscribe","topics":["a b"]}"#), ErrorCode::InvalidTopic);
        assert_eq!(code(r#"{"op":"publish","topic":"a"}"#), ErrorCode::MissingField);
        assert_eq!(code(r#"{"op":"publish","data":1}"#), ErrorCode::MissingField);
        assert_eq!(code(r#"{"op":"publish","topic":2,"data":1}"#), ErrorCode::InvalidField);
        assert_eq!(code(r#"{"op":"fly","id":1}"#), ErrorCode::UnknownOp);
        assert_eq!(code(r#"{"op":"auth"}"#), ErrorCode::MissingField);
        assert_eq!(code(r#"{"op":"auth","token":7}"#), ErrorCode::InvalidField);
        assert_eq!(code(r#"{"op":"refresh","token":""}"#), ErrorCode::InvalidField);
        assert_eq!(code(r#"{"op":"ping","id":{}}"#), ErrorCode::InvalidField);
        assert_eq!(code(r#"{"op":"ping","op":"ping"}"#), ErrorCode::InvalidMessage);
        // Found by fuzzing (json_request): a duplicate field before a syntax error was
        // answered invalid_message; text that is not JSON is invalid_json.
        assert_eq!(code("{\"op\":\"ping\",\"op\":\"p\x04ng\"}"), ErrorCode::InvalidJson);
        assert_eq!(code(r#"{"op":"ping","op":"ping""#), ErrorCode::InvalidJson);
        // Found by fuzzing (json_request): invalid UTF-8 in a key is not JSON.
        let e = decode_request(b"{\"o\xf3\":\"ping\",\"op\":\"ping\"}", TopicRules::default()).unwrap_err();
        assert_eq!(e.code, ErrorCode::InvalidJson);
        // From fuzzing (json_request): a number out of f64's range is still a JSON number,
        // echoed verbatim.
        assert_eq!(
            dec(r#"{"op":"ping","id":1e9992}"#).unwrap(),
            ClientRequest::Ping { id: Some("1e9992") }
        );
        let e = dec(r#"{"op":"fly","id":"q"}"#).unwrap_err();
        assert_eq!(e.id, Some("\"q\""));
        let long = format!(r#"{{"op":"publish","topic":"{}","data":1,"id":9}}"#, "x".repeat(200));
        let e = dec(&long).unwrap_err();
        assert_eq!((e.code, e.id), (ErrorCode::InvalidTopic, Some("9")));
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;
        use serde_json::Value;

        fn topic() -> impl Strategy<Value = String> {
            "[A-Za-z0-9_.:/@={}-]{1,40}"
        }

        /// A JSON value of modest depth, as text.
        fn json() -> impl Strategy<Value = String> {
            let leaf = prop_oneof![
                Just(Value::Null),
                any::<bool>().prop_map(Value::from),
                any::<i64>().prop_map(Value::from),
                any::<f64>()
                    .prop_filter("finite", |f| f.is_finite())
                    .prop_map(Value::from),
                any::<String>().prop_map(Value::from),
            ];
            leaf.prop_recursive(3, 24, 4, |inner| {
                prop_oneof![
                    prop::collection::vec(inner.clone(), 0..4).prop_map(Value::from),
                    prop::collection::btree_map(any::<String>(), inner, 0..4)
                        .prop_map(|m| Value::Object(m.into_iter().collect())),
                ]
            })
            .prop_map(|v| v.to_string())
        }

        /// The raw JSON text of an id: a number or a string.
        fn id() -> impl Strategy<Value = Option<String>> {
            proptest::option::of(prop_oneof![
                any::<i64>().prop_map(|n| n.to_string()),
                any::<u64>().prop_map(|n| n.to_string()),
                any::<String>().prop_map(|s| Value::from(s).to_string()),
            ])
        }

        /// `(op, fields)`: a valid request's fields as JSON text, before serialising.
        fn request() -> impl Strategy<Value = (String, Vec<(&'static str, String)>)> {
            let topics = prop::collection::vec(topic(), 1..5);
            prop_oneof![
                (prop_oneof![Just("subscribe"), Just("unsubscribe")], topics, id()).prop_map(|(op, t, id)| {
                    let mut f = vec![("topics", Value::from(t).to_string())];
                    f.extend(id.map(|i| ("id", i)));
                    (op.to_owned(), f)
                }),
                (topic(), json(), id()).prop_map(|(t, data, id)| {
                    let mut f = vec![("topic", Value::from(t).to_string()), ("data", data)];
                    f.extend(id.map(|i| ("id", i)));
                    ("publish".to_owned(), f)
                }),
                id().prop_map(|id| ("ping".to_owned(), id.map(|i| ("id", i)).into_iter().collect())),
            ]
        }

        /// Serialises `op` and the fields in order with `ws` as whitespace, plus an unknown
        /// field.
        fn serialise(op: &str, fields: &[(&str, String)], ws: &str) -> String {
            let mut parts = vec![format!("{ws}\"op\"{ws}:{ws}\"{op}\"{ws}")];
            for (k, v) in fields {
                parts.push(format!("{ws}\"{k}\"{ws}:{ws}{v}{ws}"));
            }
            parts.push(format!("{ws}\"x-unknown\":[1,{{}}]"));
            format!("{ws}{{{}}}{ws}", parts.join(","))
        }

        /// Checks what any answer of the decoder promises about `text`.
        fn check(text: &[u8]) -> Result<(), TestCaseError> {
            let rules = TopicRules::default();
            match decode_request(text, rules) {
                Ok(req) => {
                    let topics: Vec<&str> = match &req {
                        ClientRequest::Subscribe { topics, .. } | ClientRequest::Unsubscribe { topics, .. } => {
                            prop_assert!(!topics.is_empty());
                            topics.iter().map(|t| t.as_ref()).collect()
                        }
                        ClientRequest::Publish { topic, data, .. } => {
                            prop_assert!(serde_json::from_str::<serde::de::IgnoredAny>(data).is_ok());
                            vec![topic.as_ref()]
                        }
                        ClientRequest::Ping { .. } | ClientRequest::Pong => vec![],
                        ClientRequest::Auth { token, .. } | ClientRequest::Refresh { token, .. } => {
                            prop_assert!(!token.is_empty());
                            vec![]
                        }
                    };
                    for t in topics {
                        prop_assert!(validate_topic(t, rules).is_ok());
                    }
                    if let Some(id) = req.id() {
                        prop_assert!(serde_json::from_str::<Value>(id).is_ok(), "id is JSON: {id}");
                    }
                }
                Err(e) => {
                    if let Some(id) = e.id {
                        prop_assert!(serde_json::from_str::<Value>(id).is_ok(), "id is JSON: {id}");
                    }
                    prop_assert!(!e.message.is_empty());
                }
            }
            Ok(())
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(128))]

            #[test]
            fn valid_requests_decode_to_what_was_generated(
                (op, fields) in request().prop_flat_map(|(op, f)| (Just(op), Just(f).prop_shuffle())),
                ws in prop_oneof![Just(""), Just(" "), Just("\n\t ")],
            ) {
                let text = serialise(&op, &fields, ws);
                let got = decode_request(text.as_bytes(), TopicRules::default()).map_err(|e| e.message).unwrap();
                let field = |k: &str| fields.iter().find(|(n, _)| *n == k).map(|(_, v)| v.as_str());
                let id = field("id");
                let names = || -> Vec<Cow<'_, str>> {
                    serde_json::from_str::<Vec<String>>(field("topics").unwrap()).unwrap().into_iter().map(Cow::Owned).collect()
                };
                let want = match op.as_str() {
                    "subscribe" => ClientRequest::Subscribe { topics: names(), since: vec![], id },
                    "unsubscribe" => ClientRequest::Unsubscribe { topics: names(), id },
                    "publish" => ClientRequest::Publish {
                        topic: Cow::Owned(serde_json::from_str(field("topic").unwrap()).unwrap()),
                        data: field("data").unwrap(),
                        id,
                    },
                    _ => ClientRequest::Ping { id },
                };
                prop_assert_eq!(got, want);
            }

            #[test]
            fn json_ish_strings_never_panic(text in r#"[ {}\[\]":,.0-9a-z\\eE+-]{0,80}"#) {
                check(text.as_bytes())?;
            }

            #[test]
            fn damaged_requests_never_panic(
                (op, fields) in request(),
                at in any::<prop::sample::Index>(),
                byte in any::<u8>(),
                cut in any::<prop::sample::Index>(),
            ) {
                let mut text = serialise(&op, &fields, "").into_bytes();
                let i = at.index(text.len());
                text[i] = byte;
                text.truncate(cut.index(text.len() + 1));
                check(&text)?;
            }

            #[test]
            fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..100)) {
                check(&bytes)?;
            }
        }
    }
}
