//! Checks real responses against docs/openapi.yaml.
//!
//! The document is parsed once (yaml-rust2, converted to `serde_json::Value`). For each
//! response the request path is matched to a path template, and the status must be
//! documented for that operation; headers the document lists must be present; a JSON body
//! must satisfy the schema. The schema checker covers what the document uses: `$ref`,
//! `type` (one or a list), `enum`, `required`, `properties`, `additionalProperties: false`
//! (so an undocumented field fails), `items`, `maxLength`. Every checked
//! (method, template, status) is recorded, so a test can assert that every documented
//! operation was exercised.

use std::collections::BTreeSet;
use std::sync::{Mutex, OnceLock};

use serde_json::{Map, Value};
use yaml_rust2::{Yaml, YamlLoader};

use super::Resp;

/// The parsed document.
pub fn spec() -> &'static Value {
    static SPEC: OnceLock<Value> = OnceLock::new();
    SPEC.get_or_init(|| {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/openapi.yaml");
        let text = std::fs::read_to_string(path).expect("docs/openapi.yaml is readable");
        let docs = YamlLoader::load_from_str(&text).expect("docs/openapi.yaml is valid YAML");
        to_json(&docs[0])
    })
}

fn to_json(y: &Yaml) -> Value {
    match y {
        Yaml::Real(s) => s.parse::<f64>().map(Value::from).unwrap_or(Value::Null),
        Yaml::Integer(i) => Value::from(*i),
        Yaml::String(s) => Value::from(s.clone()),
        Yaml::Boolean(b) => Value::from(*b),
        Yaml::Array(a) => Value::Array(a.iter().map(to_json).collect()),
        Yaml::Hash(h) => {
            let mut m = Map::new();
            for (k, v) in h {
                let key = match k {
                    Yaml::String(s) => s.clone(),
                    Yaml::Integer(i) => i.to_string(),
                    other => panic!("unsupported YAML key {other:?}"),
                };
                m.insert(key, to_json(v));
            }
            Value::Object(m)
        }
        _ => Value::Null,
    }
}

fn checked() -> &'static Mutex<BTreeSet<(String, String, u16)>> {
    static CHECKED: OnceLock<Mutex<BTreeSet<(String, String, u16)>>> = OnceLock::new();
    CHECKED.get_or_init(Default::default)
}

/// Every (method, template, status) checked so far in this test binary.
pub fn checked_so_far() -> BTreeSet<(String, String, u16)> {
    checked().lock().unwrap().clone()
}

/// Whether `path` fits `template`; `{topic}` may span slashes, other parameters may not.
fn fits(template: &str, path: &str) -> bool {
    match template.find('{') {
        None => template == path,
        Some(open) => {
            let Some(rest) = path.strip_prefix(&template[..open]) else {
                return false;
            };
            let close = template[open..].find('}').expect("balanced braces") + open;
            let slashes = &template[open..=close] == "{topic}";
            let tail = &template[close + 1..];
            (1..=rest.len())
                .take_while(|&n| slashes || !rest[..n].contains('/'))
                .any(|n| fits(tail, &rest[n..]))
        }
    }
}

/// The most specific template `path` fits (the one with the most literal text).
pub fn template_for(path: &str) -> Option<String> {
    let paths = spec()["paths"].as_object().expect("paths");
    paths
        .keys()
        .filter(|t| fits(t, path))
        .max_by_key(|t| {
            t.split('{')
                .map(|s| s.rsplit('}').next().unwrap_or("").len())
                .sum::<usize>()
        })
        .cloned()
}

fn resolve(v: &Value) -> &Value {
    match v.get("$ref").and_then(Value::as_str) {
        Some(r) => {
            let mut cur = spec();
            for part in r.trim_start_matches("#/").split('/') {
                cur = &cur[part];
            }
            assert!(!cur.is_null(), "dangling $ref {r}");
            resolve(cur)
        }
        None => v,
    }
}

/// Checks one response; panics with every mismatch.
pub fn check(method: &str, path: &str, resp: &Resp) {
    let path_only = path.split('?').next().unwrap_or(path);
    let Some(template) = template_for(path_only) else {
        // Not a documented route: it must be a documented error shape (404).
        assert_eq!(
            resp.status, 404,
            "{method} {path} is undocumented but answered {}",
            resp.status
        );
        validate_body(
            &spec()["components"]["schemas"]["Error"],
            resp,
            &format!("{method} {path}"),
        );
        return;
    };
    let op_method = if method == "HEAD" {
        "get"
    } else {
        &method.to_ascii_lowercase()
    };
    let where_ = format!("{method} {path} ({template}) -> {}", resp.status);
    let op = &spec()["paths"][&template][op_method];
    let documented = if op.is_null() {
        // A method the path does not have: only 405 is a valid answer.
        assert_eq!(resp.status, 405, "{where_}: undocumented method");
        resolve(&spec()["components"]["responses"]["MethodNotAllowed"])
    } else {
        let r = &op["responses"][resp.status.to_string()];
        assert!(!r.is_null(), "{where_}: status not documented");
        resolve(r)
    };
    if let Some(headers) = documented.get("headers").and_then(Value::as_object) {
        for name in headers.keys() {
            assert!(resp.header(name).is_some(), "{where_}: header {name} missing");
        }
    }
    if method != "HEAD" {
        let content = &documented["content"];
        if let Some(schema) = content.get("application/json").map(|c| &c["schema"]) {
            assert!(
                resp.header("content-type")
                    .is_some_and(|c| c.starts_with("application/json")),
                "{where_}: not JSON"
            );
            validate_body(schema, resp, &where_);
        } else if content.get("text/plain").is_some() {
            assert!(std::str::from_utf8(&resp.body).is_ok(), "{where_}: not text");
        }
    }
    checked()
        .lock()
        .unwrap()
        .insert((op_method.to_owned(), template, resp.status));
}

fn validate_body(schema: &Value, resp: &Resp, where_: &str) {
    let body: Value = serde_json::from_slice(&resp.body).unwrap_or_else(|e| panic!("{where_}: body not JSON: {e}"));
    let mut errors = Vec::new();
    validate(schema, &body, "$", &mut errors);
    assert!(errors.is_empty(), "{where_}: {body}\n  {}", errors.join("\n  "));
}

fn type_ok(t: &str, v: &Value) -> bool {
    match t {
        "object" => v.is_object(),
        "array" => v.is_array(),
        "string" => v.is_string(),
        "integer" => v.is_i64() || v.is_u64(),
        "number" => v.is_number(),
        "boolean" => v.is_boolean(),
        "null" => v.is_null(),
        other => panic!("unsupported schema type {other}"),
    }
}

/// Validates `v` against `schema`, collecting errors with their JSON path.
pub fn validate(schema: &Value, v: &Value, at: &str, errors: &mut Vec<String>) {
    let schema = resolve(schema);
    if let Some(t) = schema.get("type") {
        let ok = match t {
            Value::String(t) => type_ok(t, v),
            Value::Array(ts) => ts.iter().any(|t| type_ok(t.as_str().unwrap_or(""), v)),
            _ => true,
        };
        if !ok {
            errors.push(format!("{at}: {v} is not of type {t}"));
            return;
        }
    }
    if let Some(options) = schema.get("enum").and_then(Value::as_array) {
        if !options.contains(v) {
            errors.push(format!("{at}: {v} is not one of {options:?}"));
        }
    }
    if let (Some(max), Some(s)) = (schema.get("maxLength").and_then(Value::as_u64), v.as_str()) {
        if s.chars().count() as u64 > max {
            errors.push(format!("{at}: longer than {max}"));
        }
    }
    if let Some(obj) = v.as_object() {
        for req in schema.get("required").and_then(Value::as_array).into_iter().flatten() {
            let name = req.as_str().unwrap_or("");
            if !obj.contains_key(name) {
                errors.push(format!("{at}: required field `{name}` missing"));
            }
        }
        let props = schema.get("properties").and_then(Value::as_object);
        for (k, fv) in obj {
            match props.and_then(|p| p.get(k)) {
                Some(ps) => validate(ps, fv, &format!("{at}.{k}"), errors),
                None if schema.get("additionalProperties") == Some(&Value::Bool(false)) => {
                    errors.push(format!("{at}: field `{k}` is not documented"))
                }
                None => {}
            }
        }
    }
    if let (Some(items), Some(arr)) = (schema.get("items"), v.as_array()) {
        for (i, item) in arr.iter().enumerate() {
            validate(items, item, &format!("{at}[{i}]"), errors);
        }
    }
}
