//! Every way an admin API request can fail, as one enum: each variant knows its HTTP status
//! and its stable snake_case `code`, and renders as `{"code": ..., "message": ...}`.
//!
//! Messages say what was wrong and how to fix it, never internals. The codes are part of
//! the API contract (listed in docs/http-api.md and docs/openapi.yaml); messages are not.
//! The relay failure of a publish is not here: its 503 carries the publish result too and
//! is rendered by `publish.rs`.

use hyper::header::{HeaderValue, ALLOW, CONNECTION, RETRY_AFTER, WWW_AUTHENTICATE};
use hyper::{Response, StatusCode};

use crate::http_server::{json_error, Body};

/// See the module docs.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ApiError {
    /// No usable `Authorization: Bearer` header.
    #[error("this API needs `Authorization: Bearer <key>`")]
    MissingKey,
    /// A bearer key was sent but matches none of `admin.api_keys`.
    #[error("the API key is not valid")]
    WrongKey,
    /// A publish-only key (`admin.publish_keys`) on an endpoint that does not publish.
    #[error("this API key may only publish (admin.publish_keys); this endpoint needs a key from admin.api_keys")]
    Forbidden,
    /// A publish to one of the node's system topics (`[demo]`): 403 `forbidden`.
    #[error("{0}")]
    Reserved(String),
    #[error("{0}")]
    NotFound(String),
    /// `allow` lists the methods the path does accept.
    #[error("this endpoint accepts {allow}")]
    MethodNotAllowed { allow: &'static str },
    #[error("the body is not valid JSON: {0}")]
    InvalidJson(String),
    #[error("the field `{0}` is required")]
    MissingField(&'static str),
    #[error("{0}")]
    InvalidField(String),
    #[error("{0}")]
    InvalidTopic(String),
    #[error("{0}")]
    InvalidParameter(String),
    #[error("the body is not valid UTF-8, as a text/* content type requires")]
    InvalidUtf8,
    /// Refused by `Content-Length` before reading, or cut off while reading.
    #[error("the body is larger than {limit} bytes (admin.max_body_bytes or limits.max_message_bytes)")]
    BodyTooLarge { limit: usize },
    /// One message's data passes `limits.max_message_bytes`.
    #[error("the message data is {len} bytes; the limit is {limit} (limits.max_message_bytes)")]
    MessageTooLarge { len: usize, limit: usize },
    #[error("{0}")]
    UnsupportedMediaType(String),
    #[error("the request body did not arrive within {0} seconds")]
    RequestTimeout(u64),
    #[error("the request body could not be read: {0}")]
    BodyRead(String),
    /// The bodies being received together already hold `admin.max_pending_body_bytes`.
    #[error("this node is receiving too many request bodies at once; retry in {retry_after_secs} s")]
    Overloaded { retry_after_secs: u64 },
    /// The topic keeps no history (no `[[history]]` entry matches it).
    #[error("topic {0:?} keeps no history (no [[history]] entry matches it)")]
    NoHistory(String),
    /// History could not be read (the relay is down or did not answer).
    #[error("history could not be read: {0}")]
    RelayUnavailable(String),
}

impl ApiError {
    pub fn status(&self) -> StatusCode {
        match self {
            Self::MissingKey | Self::WrongKey => StatusCode::UNAUTHORIZED,
            Self::Forbidden | Self::Reserved(_) => StatusCode::FORBIDDEN,
            Self::NotFound(_) => StatusCode::NOT_FOUND,
            Self::MethodNotAllowed { .. } => StatusCode::METHOD_NOT_ALLOWED,
            Self::InvalidJson(_)
            | Self::MissingField(_)
            | Self::InvalidField(_)
            | Self::InvalidTopic(_)
            | Self::InvalidParameter(_)
            | Self::InvalidUtf8
            | Self::BodyRead(_) => StatusCode::BAD_REQUEST,
            Self::BodyTooLarge { .. } | Self::MessageTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            Self::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Self::RequestTimeout(_) => StatusCode::REQUEST_TIMEOUT,
            Self::Overloaded { .. } | Self::RelayUnavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            Self::NoHistory(_) => StatusCode::NOT_FOUND,
        }
    }

    /// The stable machine-readable code.
    pub fn code(&self) -> &'static str {
        match self {
            Self::MissingKey | Self::WrongKey => "unauthorized",
            Self::Forbidden | Self::Reserved(_) => "forbidden",
            Self::NotFound(_) => "not_found",
            Self::MethodNotAllowed { .. } => "method_not_allowed",
            Self::InvalidJson(_) => "invalid_json",
            Self::MissingField(_) => "missing_field",
            Self::InvalidField(_) => "invalid_field",
            Self::InvalidTopic(_) => "invalid_topic",
            Self::InvalidParameter(_) => "invalid_parameter",
            Self::InvalidUtf8 => "invalid_utf8",
            Self::BodyTooLarge { .. } => "body_too_large",
            Self::MessageTooLarge { .. } => "message_too_large",
            Self::UnsupportedMediaType(_) => "unsupported_media_type",
            Self::RequestTimeout(_) => "request_timeout",
            Self::BodyRead(_) => "bad_body",
            Self::Overloaded { .. } => "overloaded",
            Self::NoHistory(_) => "no_history",
            Self::RelayUnavailable(_) => "relay_unavailable",
        }
    }

    /// The JSON error response, with the headers its status calls for.
    pub fn into_response(self) -> Response<Body> {
        let mut resp = json_error(self.status(), self.code(), &self.to_string());
        let headers = resp.headers_mut();
        match &self {
            Self::MissingKey => {
                headers.insert(WWW_AUTHENTICATE, HeaderValue::from_static("Bearer realm=\"herald\""));
            }
            Self::WrongKey => {
                headers.insert(
                    WWW_AUTHENTICATE,
                    HeaderValue::from_static("Bearer realm=\"herald\", error=\"invalid_token\""),
                );
            }
            Self::MethodNotAllowed { allow } => {
                headers.insert(ALLOW, HeaderValue::from_static(allow));
            }
            // The unread rest of the body must not be parsed as the next request.
            Self::BodyTooLarge { .. } | Self::RequestTimeout(_) | Self::BodyRead(_) => {
                headers.insert(CONNECTION, HeaderValue::from_static("close"));
            }
            Self::Overloaded { retry_after_secs } => {
                headers.insert(CONNECTION, HeaderValue::from_static("close"));
                headers.insert(RETRY_AFTER, HeaderValue::from(*retry_after_secs));
            }
            _ => {}
        }
        resp
    }
}

/// What a handler returns: a response, or an error rendered by [`ApiError::into_response`].
pub type ApiResult = Result<Response<Body>, ApiError>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_and_headers() {
        let r = ApiError::MethodNotAllowed { allow: "POST" }.into_response();
        assert_eq!(r.status(), StatusCode::METHOD_NOT_ALLOWED);
        assert_eq!(r.headers()[ALLOW], "POST");
        let r = ApiError::WrongKey.into_response();
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
        assert!(r.headers()[WWW_AUTHENTICATE].to_str().unwrap().starts_with("Bearer"));
        let r = ApiError::BodyTooLarge { limit: 10 }.into_response();
        assert_eq!(r.status(), StatusCode::PAYLOAD_TOO_LARGE);
        assert_eq!(r.headers()[CONNECTION], "close");
        assert_eq!(ApiError::MissingField("topic").code(), "missing_field");
    }
}
