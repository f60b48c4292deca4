//! The JSON request shapes of the publish endpoints and their validation:
//! `{"topic": "...", "data": <JSON>}` (alone, or as items of `{"messages": [...]}`) and
//! `{"topics": [...], "data": <JSON>}`.
//!
//! `data` is kept as the request's own bytes (`RawValue`): it is validated as JSON by the
//! parser and then published verbatim, without being decoded and re-encoded. `null` is a
//! valid `data`; an absent `data` is `missing_field`. Unknown fields are ignored, so
//! clients may send fields later versions understand.

use herald_protocol::{validate_topic, TopicRules};
use serde::{Deserialize, Deserializer};
use serde_json::value::RawValue;

use super::error::ApiError;

/// Largest number of messages in one batch, and of topics in one broadcast.
pub const MAX_ITEMS: usize = 1000;

/// Deserializes a present field as `Some`, even when its value is `null`.
fn present<'de, D: Deserializer<'de>>(d: D) -> Result<Option<&'de RawValue>, D::Error> {
    <&'de RawValue>::deserialize(d).map(Some)
}

/// `{"topic": ..., "data": ...}` before validation.
#[derive(Deserialize)]
pub struct MessageIn<'a> {
    #[serde(borrow, default, deserialize_with = "present")]
    topic: Option<&'a RawValue>,
    #[serde(borrow, default, deserialize_with = "present")]
    data: Option<&'a RawValue>,
}

/// `{"messages": [...]}`; each item is checked on its own so one bad item fails alone.
#[derive(Deserialize)]
pub struct BatchIn<'a> {
    #[serde(borrow, default)]
    pub messages: Option<Vec<&'a RawValue>>,
}

/// `{"topics": [...], "data": ...}`.
#[derive(Deserialize)]
pub struct BroadcastIn<'a> {
    #[serde(default)]
    pub topics: Option<Vec<serde_json::Value>>,
    #[serde(borrow, default, deserialize_with = "present")]
    pub data: Option<&'a RawValue>,
}

/// A message ready to publish: a valid topic, JSON data within the size limit.
#[derive(Debug)]
pub struct Message<'a> {
    pub topic: String,
    pub data: &'a RawValue,
}

/// Why a message was refused, with its topic when it was a string (for batch reports).
#[derive(Debug)]
pub struct Refused {
    pub error: ApiError,
    pub topic: Option<String>,
}

/// The limits a message must respect.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub topics: TopicRules,
    /// `limits.max_message_bytes`: the longest `data`, in bytes of JSON text.
    pub max_data: usize,
}

/// Checks a topic name; the error names the topic.
pub fn check_topic(topic: &str, rules: TopicRules) -> Result<(), ApiError> {
    validate_topic(topic, rules).map_err(|e| ApiError::InvalidTopic(format!("invalid topic {topic:?}: {e}")))
}

/// Checks the size of `data`.
pub fn check_data(data: &RawValue, limits: Limits) -> Result<(), ApiError> {
    let len = data.get().len();
    if len > limits.max_data {
        return Err(ApiError::MessageTooLarge {
            len,
            limit: limits.max_data,
        });
    }
    Ok(())
}

impl<'a> MessageIn<'a> {
    /// Validates the fields in the order a client would fix them: topic, then data.
    pub fn validate(self, limits: Limits) -> Result<Message<'a>, Refused> {
        let refuse = |error, topic| Refused { error, topic };
        let Some(raw_topic) = self.topic else {
            return Err(refuse(ApiError::MissingField("topic"), None));
        };
        let Ok(topic) = serde_json::from_str::<String>(raw_topic.get()) else {
            return Err(refuse(ApiError::InvalidField("`topic` must be a string".into()), None));
        };
        if let Err(e) = check_topic(&topic, limits.topics) {
            return Err(refuse(e, Some(topic)));
        }
        let Some(data) = self.data else {
            return Err(refuse(ApiError::MissingField("data"), Some(topic)));
        };
        if let Err(e) = check_data(data, limits) {
            return Err(refuse(e, Some(topic)));
        }
        Ok(Message { topic, data })
    }
}

/// Parses one batch item (itself a JSON value inside the batch).
pub fn parse_item<'a>(item: &'a RawValue, limits: Limits) -> Result<Message<'a>, Refused> {
    match serde_json::from_str::<MessageIn<'a>>(item.get()) {
        Ok(m) => m.validate(limits),
        Err(_) => Err(Refused {
            error: ApiError::InvalidField("each message must be an object {\"topic\": ..., \"data\": ...}".into()),
            topic: None,
        }),
    }
}

/// Checks a list's length: 1..=[`MAX_ITEMS`].
pub fn check_count(n: usize, what: &str) -> Result<(), ApiError> {
    if n == 0 {
        return Err(ApiError::InvalidField(format!("`{what}` must not be empty")));
    }
    if n > MAX_ITEMS {
        return Err(ApiError::InvalidField(format!(
            "`{what}` holds {n} items; at most {MAX_ITEMS} per request"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: Limits = Limits {
        topics: TopicRules { max_len: 16 },
        max_data: 10,
    };

    fn parse(s: &str) -> Result<String, String> {
        let m: MessageIn<'_> = serde_json::from_str(s).map_err(|e| e.to_string())?;
        m.validate(LIMITS)
            .map(|m| format!("{}={}", m.topic, m.data.get()))
            .map_err(|r| format!("{}:{:?}", r.error.code(), r.topic))
    }

    #[test]
    fn validates_messages() {
        assert_eq!(parse(r#"{"topic":"a","data":{"x":1}}"#), Ok(r#"a={"x":1}"#.into()));
        assert_eq!(parse(r#"{"topic":"a","data":null}"#), Ok("a=null".into()));
        assert_eq!(parse(r#"{"topic":"\u0061","data":1,"extra":2}"#), Ok("a=1".into()));
        assert_eq!(parse(r#"{"data":1}"#), Err("missing_field:None".into()));
        assert_eq!(parse(r#"{"topic":5,"data":1}"#), Err("invalid_field:None".into()));
        assert_eq!(
            parse(r#"{"topic":"a b","data":1}"#),
            Err("invalid_topic:Some(\"a b\")".into())
        );
        assert_eq!(parse(r#"{"topic":"a"}"#), Err("missing_field:Some(\"a\")".into()));
        assert_eq!(
            parse(r#"{"topic":"a","data":"0123456789"}"#),
            Err("message_too_large:Some(\"a\")".into())
        );
    }

    #[test]
    fn batch_items_fail_alone() {
        let b: BatchIn<'_> = serde_json::from_str(r#"{"messages":[{"topic":"a","data":1},7]}"#).unwrap();
        let items = b.messages.unwrap();
        assert!(parse_item(items[0], LIMITS).is_ok());
        assert_eq!(parse_item(items[1], LIMITS).unwrap_err().error.code(), "invalid_field");
        assert!(check_count(0, "messages").is_err());
        assert!(check_count(MAX_ITEMS + 1, "messages").is_err());
    }
}
