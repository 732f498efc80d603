//! A mediation's declared inputs: where each comes from (path, query, header, flat JSON body), its
//! type and bounds. A request is read into typed [`Inputs`] before any backend is touched; an
//! input that is missing, of the wrong type, out of bounds or not declared at all is refused, and
//! the refusal names the input without echoing the caller's value.

use std::collections::BTreeMap;

use regex::Regex;
use serde_json::{Map, Number, Value};

use crate::routing::PathParams;

/// The longest string input when the declaration sets no `max_length`.
pub const DEFAULT_MAX_LENGTH: usize = 256;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    Path,
    Query,
    Header,
    Body,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InputType {
    String,
    Integer,
    Number,
    Boolean,
}

impl InputType {
    pub fn parse(name: &str) -> Option<InputType> {
        Some(match name {
            "string" => InputType::String,
            "integer" => InputType::Integer,
            "number" => InputType::Number,
            "boolean" => InputType::Boolean,
            _ => return None,
        })
    }

    pub fn label(self) -> &'static str {
        match self {
            InputType::String => "string",
            InputType::Integer => "integer",
            InputType::Number => "number",
            InputType::Boolean => "boolean",
        }
    }

    /// The typed value of `raw` (path, query and header values are text; so are body values
    /// that flows send quoted).
    pub fn parse_text(self, raw: &str) -> Option<Value> {
        match self {
            InputType::String => Some(Value::String(raw.to_string())),
            InputType::Integer => raw.trim().parse::<i64>().ok().map(Value::from),
            // Integral numbers stay integers (`10`, not `10.0`).
            InputType::Number => match raw.trim().parse::<i64>() {
                Ok(i) => Some(Value::from(i)),
                Err(_) => raw.trim().parse::<f64>().ok().and_then(Number::from_f64).map(Value::Number),
            },
            InputType::Boolean => match raw.trim() {
                "true" => Some(Value::Bool(true)),
                "false" => Some(Value::Bool(false)),
                _ => None,
            },
        }
    }

    /// The typed value of a JSON body field.
    fn parse_json(self, value: &Value) -> Option<Value> {
        match (self, value) {
            (_, Value::String(s)) => self.parse_text(s),
            (InputType::Integer, Value::Number(n)) => n.as_i64().map(Value::from),
            (InputType::Number, Value::Number(_)) => Some(value.clone()),
            (InputType::Boolean, Value::Bool(_)) => Some(value.clone()),
            _ => None,
        }
    }
}

/// One declared input.
#[derive(Debug, Clone)]
pub struct InputSpec {
    pub name: String,
    pub source: Source,
    /// Its name in the source: path parameter, query parameter, header (lower case) or body field.
    pub key: String,
    pub ty: InputType,
    /// Must match the whole value (compiled anchored).
    pub pattern: Option<Regex>,
    /// Allowed values, typed.
    pub allowed: Vec<Value>,
    pub min: Option<f64>,
    pub max: Option<f64>,
    pub max_length: usize,
    /// Taken when the input is absent; an input without one is required unless `optional`.
    pub default: Option<Value>,
    pub optional: bool,
}

/// Why a request's inputs were refused; `input` is the declared name (or, for an undeclared
/// one, its source and a bounded copy of its key).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InputError {
    pub input: String,
    pub reason: &'static str,
}

/// A request's inputs, typed and checked, by declared name.
pub type Inputs = BTreeMap<String, Value>;

/// What a request offers, before checking.
pub struct RawRequest<'a> {
    pub params: &'a PathParams,
    pub query: Option<&'a str>,
    pub headers: &'a http::HeaderMap,
    /// The request body, when the mediation reads one.
    pub body: Option<&'a [u8]>,
}

/// The longest undeclared key an error names.
const MAX_NAMED_KEY: usize = 40;

fn undeclared(source: &str, key: &str) -> InputError {
    let key: String =
        key.chars().take(MAX_NAMED_KEY).filter(|c| c.is_ascii_alphanumeric() || "_-.".contains(*c)).collect();
    InputError { input: format!("{source}.{key}"), reason: "not a declared input" }
}

impl InputSpec {
    /// Checks one present value against the declaration.
    fn check(&self, value: Value, raw_len: usize) -> Result<Value, &'static str> {
        if self.ty == InputType::String && raw_len > self.max_length {
            return Err("longer than its max_length");
        }
        let text: std::borrow::Cow<'_, str> = match &value {
            Value::String(s) => s.into(),
            other => other.to_string().into(),
        };
        if self.pattern.as_ref().is_some_and(|p| !p.is_match(&text)) {
            return Err("does not match its pattern");
        }
        if !self.allowed.is_empty() && !self.allowed.contains(&value) {
            return Err("not one of its allowed values");
        }
        if let Some(n) = value.as_f64() {
            if self.min.is_some_and(|min| n < min) || self.max.is_some_and(|max| n > max) {
                return Err("out of its min/max range");
            }
        }
        Ok(value)
    }
}

/// Reads and checks every declared input; anything undeclared in the query or body is refused.
pub fn extract(specs: &[InputSpec], request: &RawRequest<'_>) -> Result<Inputs, InputError> {
    let query: Vec<(String, String)> = match request.query {
        Some(q) => form_urlencoded::parse(q.as_bytes()).into_owned().collect(),
        None => Vec::new(),
    };
    for (key, _) in &query {
        if !specs.iter().any(|s| s.source == Source::Query && &s.key == key) {
            return Err(undeclared("query", key));
        }
    }
    let body: Map<String, Value> = match request.body {
        None => Map::new(),
        Some(bytes) if bytes.iter().all(u8::is_ascii_whitespace) => Map::new(),
        Some(bytes) => match serde_json::from_slice::<Value>(bytes) {
            Ok(Value::Object(map)) => map,
            _ => return Err(InputError { input: "body".into(), reason: "not a flat JSON object" }),
        },
    };
    for key in body.keys() {
        if !specs.iter().any(|s| s.source == Source::Body && &s.key == key) {
            return Err(undeclared("body", key));
        }
    }

    let mut inputs = Inputs::new();
    for spec in specs {
        let fail = |reason| InputError { input: spec.name.clone(), reason };
        let present: Option<(Value, usize)> = match spec.source {
            Source::Path => match request.params.get(&spec.key) {
                Some(raw) => {
                    Some((spec.ty.parse_text(raw).ok_or_else(|| fail(type_error(spec.ty)))?, raw.chars().count()))
                }
                None => None,
            },
            Source::Query => {
                let mut values = query.iter().filter(|(k, _)| k == &spec.key);
                match (values.next(), values.next()) {
                    (Some(_), Some(_)) => return Err(fail("given more than once")),
                    (Some((_, raw)), None) => {
                        Some((spec.ty.parse_text(raw).ok_or_else(|| fail(type_error(spec.ty)))?, raw.chars().count()))
                    }
                    (None, _) => None,
                }
            }
            Source::Header => {
                let mut values = request.headers.get_all(spec.key.as_str()).iter();
                match (values.next(), values.next()) {
                    (Some(_), Some(_)) => return Err(fail("given more than once")),
                    (Some(raw), None) => {
                        let raw = raw.to_str().map_err(|_| fail("not valid text"))?;
                        Some((spec.ty.parse_text(raw).ok_or_else(|| fail(type_error(spec.ty)))?, raw.chars().count()))
                    }
                    (None, _) => None,
                }
            }
            Source::Body => match body.get(&spec.key) {
                None | Some(Value::Null) => None,
                Some(value) => {
                    let len = value.as_str().map_or(0, |s| s.chars().count());
                    Some((spec.ty.parse_json(value).ok_or_else(|| fail(type_error(spec.ty)))?, len))
                }
            },
        };
        match present {
            Some((value, len)) => {
                inputs.insert(spec.name.clone(), spec.check(value, len).map_err(fail)?);
            }
            None => match &spec.default {
                Some(default) => {
                    inputs.insert(spec.name.clone(), default.clone());
                }
                None if spec.optional => {}
                None => return Err(fail("missing")),
            },
        }
    }
    Ok(inputs)
}

fn type_error(ty: InputType) -> &'static str {
    match ty {
        InputType::String => "not a string",
        InputType::Integer => "not an integer",
        InputType::Number => "not a number",
        InputType::Boolean => "not a boolean (true or false)",
    }
}

/// A value of each input as the template and statement see it, for checks at start-up: the
/// default, the first allowed value, or a plain value of its type.
pub fn sample(specs: &[InputSpec]) -> Inputs {
    specs
        .iter()
        .map(|s| {
            let value = s.default.clone().or_else(|| s.allowed.first().cloned()).unwrap_or(match s.ty {
                InputType::String => Value::String("<sample & 'value'>".into()),
                InputType::Integer => Value::from(1),
                InputType::Number => Value::from(1.5),
                InputType::Boolean => Value::Bool(true),
            });
            (s.name.clone(), value)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(name: &str, source: Source, ty: InputType) -> InputSpec {
        InputSpec {
            name: name.into(),
            source,
            key: name.to_ascii_lowercase(),
            ty,
            pattern: None,
            allowed: Vec::new(),
            min: None,
            max: None,
            max_length: DEFAULT_MAX_LENGTH,
            default: None,
            optional: false,
        }
    }

    fn request<'a>(
        params: &'a PathParams,
        query: Option<&'a str>,
        headers: &'a http::HeaderMap,
        body: Option<&'a [u8]>,
    ) -> RawRequest<'a> {
        RawRequest { params, query, headers, body }
    }

    #[test]
    fn typed_inputs_from_every_source() {
        let mut id = spec("id", Source::Path, InputType::String);
        id.pattern = Some(Regex::new("^(?:[0-9]{1,10})$").unwrap());
        let mut channel = spec("channel", Source::Query, InputType::String);
        channel.allowed = vec!["voice".into(), "chat".into()];
        channel.default = Some("voice".into());
        let lang = spec("x-lang", Source::Header, InputType::String);
        let mut amount = spec("amount", Source::Body, InputType::Number);
        amount.min = Some(0.0);
        let vip = spec("vip", Source::Body, InputType::Boolean);
        let specs = vec![id, channel, lang, amount, vip];

        let params = PathParams::from_pairs(&[("id", "42")]);
        let mut headers = http::HeaderMap::new();
        headers.insert("x-lang", "fr".parse().unwrap());
        let body = br#"{"amount": "12.5", "vip": true}"#;
        let inputs = extract(&specs, &request(&params, None, &headers, Some(body))).unwrap();
        assert_eq!(inputs["id"], "42");
        assert_eq!(inputs["channel"], "voice", "default");
        assert_eq!(inputs["x-lang"], "fr");
        assert_eq!(inputs["amount"], 12.5);
        assert_eq!(inputs["vip"], true);

        let err = |query: Option<&str>, body: &[u8]| {
            extract(&specs, &request(&params, query, &headers, Some(body))).unwrap_err()
        };
        assert_eq!(err(Some("channel=fax"), body).reason, "not one of its allowed values");
        assert_eq!(err(Some("channel=chat&channel=voice"), body).reason, "given more than once");
        assert_eq!(err(Some("debug=1"), body).input, "query.debug");
        assert_eq!(err(None, br#"{"amount": -1, "vip": true}"#).reason, "out of its min/max range");
        assert_eq!(err(None, br#"{"amount": 1, "vip": "yes"}"#).input, "vip");
        assert_eq!(err(None, br#"{"amount": 1}"#).reason, "missing");
        assert_eq!(err(None, br#"{"amount": 1, "vip": true, "admin<script>": 1}"#).input, "body.adminscript");
        assert_eq!(err(None, br#"{"amount": {"x": 1}, "vip": true}"#).input, "amount");
        assert_eq!(err(None, b"[1]").input, "body");
    }

    #[test]
    fn a_pattern_holds_the_whole_value() {
        let mut id = spec("id", Source::Path, InputType::String);
        id.pattern = Some(Regex::new("^(?:[0-9]{1,10})$").unwrap());
        let headers = http::HeaderMap::new();
        for value in ["1 OR 1=1", "1;DROP TABLE accounts", "", "12345678901"] {
            let params = PathParams::from_pairs(&[("id", value)]);
            let e = extract(std::slice::from_ref(&id), &request(&params, None, &headers, None)).unwrap_err();
            assert_eq!(e, InputError { input: "id".into(), reason: "does not match its pattern" }, "{value}");
        }
    }

    #[test]
    fn strings_are_bounded_by_default() {
        let id = spec("id", Source::Query, InputType::String);
        let params = PathParams::default();
        let headers = http::HeaderMap::new();
        let long = format!("id={}", "x".repeat(DEFAULT_MAX_LENGTH + 1));
        let e = extract(std::slice::from_ref(&id), &request(&params, Some(&long), &headers, None)).unwrap_err();
        assert_eq!(e.reason, "longer than its max_length");
    }
}
