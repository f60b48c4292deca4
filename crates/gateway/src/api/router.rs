//! Maps a method and a path under `/api/` to a [`Route`], or to 404 / 405 (with the
//! `Allow` header listing what the path accepts).
//!
//! Topic names may contain `/`, so `/api/topics/{topic}` takes the whole rest of the path,
//! minus a trailing `/publish`, `/disconnect` or `/history`, which select those actions. A
//! topic whose own name ends in one of them is reached by writing that slash as `%2F`.
//! Path segments are percent-decoded and the topic is validated here, so every handler
//! gets a name the registry accepts. `HEAD` is accepted wherever `GET` is.

use herald_broker::ConnId;
use herald_protocol::{validate_topic, TopicRules};
use hyper::Method;

use super::error::ApiError;
use crate::query::percent_decode;

/// One admin API operation with its path parameters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    Node,
    Topics,
    Topic(String),
    TopicPublish(String),
    TopicDisconnect(String),
    TopicHistory(String),
    Connections,
    Connection(ConnId),
    ConnectionClose(ConnId),
    UserDisconnect(String),
    Publish,
    PublishBatch,
    Broadcast,
    Drain,
}

const GET: &str = "GET, HEAD";
const POST: &str = "POST";

/// Resolves `path` (starting with `/api`) for `method`.
pub fn resolve(method: &Method, path: &str, rules: TopicRules) -> Result<Route, ApiError> {
    let rest = path.strip_prefix("/api").unwrap_or(path);
    let (route, allow) = match rest {
        "/node" => (Route::Node, GET),
        "/topics" => (Route::Topics, GET),
        "/connections" => (Route::Connections, GET),
        "/publish" => (Route::Publish, POST),
        "/publish/batch" => (Route::PublishBatch, POST),
        "/broadcast" => (Route::Broadcast, POST),
        "/drain" => (Route::Drain, POST),
        r if r.starts_with("/topics/") => topic_route(&r["/topics/".len()..], rules)?,
        r if r.starts_with("/connections/") => connection_route(&r["/connections/".len()..])?,
        r if r.starts_with("/users/") => user_route(&r["/users/".len()..]).ok_or_else(|| not_found(path))??,
        _ => return Err(not_found(path)),
    };
    let ok = match allow {
        GET => method == Method::GET || method == Method::HEAD,
        _ => method == Method::POST,
    };
    if ok {
        Ok(route)
    } else {
        Err(ApiError::MethodNotAllowed { allow })
    }
}

fn not_found(path: &str) -> ApiError {
    ApiError::NotFound(format!("no API endpoint at {path}; see docs/http-api.md for the list"))
}

fn topic_route(rest: &str, rules: TopicRules) -> Result<(Route, &'static str), ApiError> {
    let (raw, make, allow): (&str, fn(String) -> Route, &'static str) = if let Some(t) = rest.strip_suffix("/publish") {
        (t, Route::TopicPublish, POST)
    } else if let Some(t) = rest.strip_suffix("/disconnect") {
        (t, Route::TopicDisconnect, POST)
    } else if let Some(t) = rest.strip_suffix("/history") {
        (t, Route::TopicHistory, GET)
    } else {
        (rest, Route::Topic, GET)
    };
    let topic = percent_decode(raw, false)
        .ok_or_else(|| ApiError::InvalidTopic("the topic in the path is not valid percent-encoded UTF-8".into()))?;
    validate_topic(&topic, rules).map_err(|e| ApiError::InvalidTopic(format!("invalid topic {topic:?}: {e}")))?;
    Ok((make(topic), allow))
}

/// `/users/{user}/disconnect`: the user is one percent-decoded segment.
fn user_route(rest: &str) -> Option<Result<(Route, &'static str), ApiError>> {
    let raw = rest.strip_suffix("/disconnect")?;
    if raw.is_empty() || raw.contains('/') {
        return None;
    }
    Some(match percent_decode(raw, false) {
        None => Err(ApiError::InvalidParameter(
            "the user in the path is not valid percent-encoded UTF-8".into(),
        )),
        Some(user) => super::users::check_user(&user).map(|()| (Route::UserDisconnect(user), POST)),
    })
}

fn connection_route(rest: &str) -> Result<(Route, &'static str), ApiError> {
    let (raw, close) = match rest.strip_suffix("/close") {
        Some(id) => (id, true),
        None => (rest, false),
    };
    let id: ConnId = raw
        .parse()
        .map_err(|_| ApiError::NotFound(format!("no connection {raw:?} on this node (ids are numbers)")))?;
    Ok(if close {
        (Route::ConnectionClose(id), POST)
    } else {
        (Route::Connection(id), GET)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(m: Method, p: &str) -> Result<Route, ApiError> {
        resolve(&m, p, TopicRules::default())
    }

    #[test]
    fn fixed_routes() {
        assert_eq!(r(Method::POST, "/api/publish"), Ok(Route::Publish));
        assert_eq!(r(Method::HEAD, "/api/node"), Ok(Route::Node));
        assert_eq!(
            r(Method::GET, "/api/publish"),
            Err(ApiError::MethodNotAllowed { allow: POST })
        );
        assert!(matches!(r(Method::GET, "/api/nope"), Err(ApiError::NotFound(_))));
        assert!(matches!(r(Method::GET, "/api"), Err(ApiError::NotFound(_))));
        assert!(matches!(r(Method::GET, "/api/node/"), Err(ApiError::NotFound(_))));
    }

    #[test]
    fn topics_may_hold_slashes() {
        assert_eq!(
            r(Method::GET, "/api/topics/chat/room-1"),
            Ok(Route::Topic("chat/room-1".into()))
        );
        assert_eq!(
            r(Method::POST, "/api/topics/chat/room-1/publish"),
            Ok(Route::TopicPublish("chat/room-1".into()))
        );
        assert_eq!(
            r(Method::GET, "/api/topics/a%2Fpublish"),
            Ok(Route::Topic("a/publish".into()))
        );
        assert_eq!(
            r(Method::POST, "/api/topics/%7Bg1%7D:x/disconnect"),
            Ok(Route::TopicDisconnect("{g1}:x".into()))
        );
        assert_eq!(
            r(Method::GET, "/api/topics/a/publish"),
            Err(ApiError::MethodNotAllowed { allow: POST })
        );
        assert!(matches!(
            r(Method::GET, "/api/topics/a%20b"),
            Err(ApiError::InvalidTopic(_))
        ));
        assert!(matches!(r(Method::GET, "/api/topics/"), Err(ApiError::InvalidTopic(_))));
    }

    #[test]
    fn user_routes() {
        assert_eq!(
            r(Method::POST, "/api/users/alice%40x/disconnect"),
            Ok(Route::UserDisconnect("alice@x".into()))
        );
        assert_eq!(
            r(Method::GET, "/api/users/alice/disconnect"),
            Err(ApiError::MethodNotAllowed { allow: POST })
        );
        assert!(matches!(
            r(Method::POST, "/api/users/alice"),
            Err(ApiError::NotFound(_))
        ));
        assert!(matches!(
            r(Method::POST, "/api/users//disconnect"),
            Err(ApiError::NotFound(_))
        ));
        assert!(matches!(
            r(Method::POST, "/api/users/a/b/disconnect"),
            Err(ApiError::NotFound(_))
        ));
        assert!(matches!(
            r(Method::POST, "/api/users/%FF/disconnect"),
            Err(ApiError::InvalidParameter(_))
        ));
    }

    #[test]
    fn connection_ids_are_numbers() {
        assert_eq!(r(Method::GET, "/api/connections/17"), Ok(Route::Connection(17)));
        assert_eq!(
            r(Method::POST, "/api/connections/17/close"),
            Ok(Route::ConnectionClose(17))
        );
        assert!(matches!(
            r(Method::GET, "/api/connections/x"),
            Err(ApiError::NotFound(_))
        ));
    }
}
