//! Mediations: a route that answers through a folder under `plugins/` instead of passing the
//! request through. The caller sends REST (path and query parameters, headers, a flat JSON body)
//! and gets flat JSON; the backend gets what it speaks (SOAP/XML, or SQL on a database).
//!
//! A folder is loaded and compiled once, at start-up, with the rest of the config ([`load`]);
//! every error names its file and YAML path. At run time [`Mediation::inputs`] are read
//! first (400 `invalid_input` before any backend is touched), then the backend request is built,
//! and its answer mapped back (`soap`).

pub mod golden;
pub mod inputs;
pub mod mapping;
pub mod script;
pub mod soap;
mod spec;
pub mod sql;
pub mod xml;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use pingora_http::RequestHeader;
use regex::Regex;
use serde_json::Value;

use inputs::{InputSpec, InputType, Inputs, Source, DEFAULT_MAX_LENGTH};
use mapping::{Field, ResponseMapping};
use soap::{FaultRule, SoapMediation, SoapVersion};
use sql::{Shape, SqlMediation};
use xml::{Selector, XmlLimits};

use crate::database::Database;
use crate::forwarding::{self, Forwarded};
use crate::problem::Problem;
use crate::upstream::client::UpstreamClient;
use crate::upstream::Upstream;

/// The mediation file in each folder.
pub const MEDIATION_FILE: &str = "mediation.yaml";
pub const DEFAULT_XML_MAX_BYTES: usize = 2 * 1024 * 1024;
pub const DEFAULT_XML_MAX_DEPTH: usize = 32;
/// Bounds a mediation may set: answers up to 16 MiB, 256 levels.
const XML_MAX_BYTES_LIMIT: usize = 16 * 1024 * 1024;
const XML_MAX_DEPTH_LIMIT: usize = 256;
/// The largest template or script file read from a mediation folder.
const MAX_FOLDER_FILE_BYTES: u64 = 256 * 1024;

/// A loaded, compiled mediation folder.
#[derive(Debug)]
pub struct Mediation {
    pub name: String,
    pub inputs: Vec<InputSpec>,
    /// Some input comes from the body: the gateway reads it (up to the route's `max_body_bytes`).
    pub reads_body: bool,
    pub backend: MediationBackend,
    /// Lua hooks before the backend call and after the answer is mapped.
    pub script: Option<script::Script>,
}

#[derive(Debug)]
pub enum MediationBackend {
    /// Calls the route's upstream with a SOAP envelope.
    Soap(Box<SoapMediation>),
    /// Runs one parameterized statement on a database.
    Sql(SqlMediation),
}

/// Where a mediation's call goes.
pub enum Backend<'a> {
    /// An HTTP upstream (SOAP), through the gateway's own client.
    Upstream {
        upstream: &'a Upstream,
        client: &'a UpstreamClient,
        forwarded: Forwarded<'a>,
    },
    Database(&'a Database),
}

/// What a mediation's backend call takes from the gateway and the request.
pub struct Call<'a> {
    pub backend: Backend<'a>,
    /// What is left of the route deadline.
    pub time_left: Duration,
    /// The caller's method is idempotent (a lookup): a stale pooled connection may be retried.
    pub idempotent: bool,
}

/// How a mediation call went: the caller's JSON (serialized) or the problem to answer, and the
/// backend's HTTP status when it answered at all.
#[derive(Debug)]
pub struct Outcome {
    pub result: Result<Bytes, Problem>,
    pub backend_status: Option<u16>,
}

impl Mediation {
    /// The codes of the backend-side failures this mediation can answer (beyond the core's):
    /// what a route's `on_error` may degrade.
    pub fn failure_codes(&self) -> Vec<&'static str> {
        let mut codes = vec!["upstream_bad_answer"];
        if let MediationBackend::Soap(soap) = &self.backend {
            codes.push(soap::DEFAULT_FAULT.1);
            for rule in soap.faults.iter().filter(|r| r.status >= 500) {
                if !codes.contains(&rule.problem) {
                    codes.push(rule.problem);
                }
            }
        }
        codes
    }

    /// The database a SQL mediation runs on.
    pub fn database_name(&self) -> Option<&str> {
        match &self.backend {
            MediationBackend::Sql(sql) => Some(&sql.database),
            MediationBackend::Soap(_) => None,
        }
    }

    /// `before` hook, backend call, `after` hook; the answer serialized once, within what a data
    /// action reads.
    pub async fn run(&self, inputs: &Inputs, call: Call<'_>) -> Outcome {
        let hooked = match self.before(inputs) {
            Ok(hooked) => hooked,
            Err(problem) => return Outcome { result: Err(problem), backend_status: None },
        };
        let inputs = hooked.as_ref().unwrap_or(inputs);
        let (result, backend_status) = self.call(inputs, call).await;
        let result = result.and_then(|answer| self.after(answer, inputs)).and_then(|answer| json_body(&answer));
        Outcome { result, backend_status }
    }

    /// The script's `before` hook: the changed inputs, or `None` to keep them.
    pub fn before(&self, inputs: &Inputs) -> Result<Option<Inputs>, Problem> {
        match &self.script {
            Some(script) => script.before(inputs),
            None => Ok(None),
        }
    }

    /// The script's `after` hook on a mapped answer.
    pub fn after(&self, answer: Value, inputs: &Inputs) -> Result<Value, Problem> {
        match &self.script {
            Some(script) => script.after(answer, inputs),
            None => Ok(answer),
        }
    }

    /// Builds the backend request from `inputs`, calls the backend, maps its answer; with the
    /// backend's status when it answered.
    async fn call(&self, inputs: &Inputs, call: Call<'_>) -> (Result<Value, Problem>, Option<u16>) {
        let failed = |problem| (Err(problem), None);
        match (&self.backend, call.backend) {
            (MediationBackend::Soap(soap), Backend::Upstream { upstream, client, forwarded }) => {
                let envelope = match soap.envelope(inputs) {
                    Ok(envelope) => envelope,
                    Err(problem) => return failed(problem),
                };
                let header = match soap_header(soap, envelope.len(), &forwarded) {
                    Ok(header) => header,
                    Err(e) => return failed(Problem::Internal { reason: e.to_string() }),
                };
                let peer = upstream.peer(call.time_left);
                let max_answer = soap.limits.max_bytes;
                let answer = client.call(&peer, header, envelope, max_answer, call.time_left, call.idempotent).await;
                match answer {
                    Ok(answer) => (soap.answer(answer.status, &answer.body), Some(answer.status)),
                    Err(problem) => failed(problem),
                }
            }
            (MediationBackend::Sql(sql), Backend::Database(database)) => {
                let params = sql.params(inputs);
                match database.fetch(&sql.statement, params, sql.rows_to_fetch(), call.time_left).await {
                    // The database answered: for the outcome, as an HTTP backend's 200.
                    Ok(rows) => (sql.answer(rows), Some(200)),
                    Err(problem) => failed(problem),
                }
            }
            _ => failed(Problem::Internal { reason: format!("mediation `{}` given the wrong backend", self.name) }),
        }
    }
}

fn soap_header(soap: &SoapMediation, length: usize, forwarded: &Forwarded<'_>) -> pingora::Result<RequestHeader> {
    const SOAP_ACTION: http::HeaderName = http::HeaderName::from_static("soapaction");
    let mut header = RequestHeader::build("POST", soap.path.as_bytes(), Some(8))?;
    forwarding::upstream_request(&mut header, forwarded)?;
    header.insert_header(http::header::CONTENT_TYPE, soap.content_type.clone())?;
    header.insert_header(http::header::CONTENT_LENGTH, length)?;
    header.insert_header(http::header::ACCEPT, http::HeaderValue::from_static("application/soap+xml, text/xml"))?;
    if let Some(action) = &soap.soap_action {
        header.insert_header(SOAP_ACTION, action.clone())?;
    }
    Ok(header)
}

/// The caller's answer: the mapped JSON, at most what a data action reads.
fn json_body(value: &Value) -> Result<Bytes, Problem> {
    let body = serde_json::to_vec(value).map_err(|e| Problem::Internal { reason: e.to_string() })?;
    if body.len() > mapping::MAX_OUTPUT_BYTES {
        let reason = format!("the answer is {} bytes, over {}", body.len(), mapping::MAX_OUTPUT_BYTES);
        return Err(Problem::UpstreamBadAnswer { reason });
    }
    Ok(Bytes::from(body))
}

/// One problem in a mediation folder: the file, the YAML path inside it, and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MediationError {
    pub file: PathBuf,
    pub path: String,
    pub message: String,
}

impl std::fmt::Display for MediationError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.path.is_empty() {
            write!(f, "{}: {}", self.file.display(), self.message)
        } else {
            write!(f, "{}: `{}`: {}", self.file.display(), self.path, self.message)
        }
    }
}

/// Loads `plugins_dir/name`; every error found is returned, not only the first.
pub fn load(plugins_dir: &Path, name: &str) -> Result<Mediation, Vec<MediationError>> {
    let dir = plugins_dir.join(name);
    let file = dir.join(MEDIATION_FILE);
    let at = |path: &str, message: String| MediationError { file: file.clone(), path: path.into(), message };
    // An identifier, as route and upstream names are, that cannot name `.` or `..`.
    if !crate::config::is_identifier(name) || name.starts_with('.') {
        return Err(vec![at("", format!("`{name}` is not a mediation folder name (letters, digits, `_`, `-`, `.`)"))]);
    }
    let text = std::fs::read_to_string(&file).map_err(|e| vec![at("", format!("cannot read: {e}"))])?;
    // serde_yaml's message names the path, line and column itself.
    let parsed: spec::MediationFile = serde_yaml_ng::from_str(&text).map_err(|e| vec![at("", e.to_string())])?;

    let mut errors = Vec::new();
    let mut err = |path: String, message: String| errors.push(at(&path, message));
    let inputs = input_specs(&parsed.inputs, &mut err);
    let reads_body = inputs.iter().any(|i| i.source == Source::Body);
    let script = match &parsed.script {
        None => None,
        Some(file) => match read_in_folder(&dir, file, MAX_FOLDER_FILE_BYTES)
            .and_then(|source| script::Script::compile(&dir.join(file), source))
        {
            Ok(script) => Some(script),
            Err(e) => {
                err("script".into(), e);
                None
            }
        },
    };
    let backend = match (&parsed.request, &parsed.sql) {
        (Some(_), Some(_)) => {
            err("sql".into(), "a mediation has either `request` (SOAP) or `sql`, not both".into());
            None
        }
        (None, None) => {
            err("".into(), "required: `request` (a SOAP call) or `sql` (a statement)".into());
            None
        }
        (None, Some(section)) => sql_mediation(section, &inputs, &mut err).map(MediationBackend::Sql),
        (Some(request), None) => {
            soap_mediation(&dir, request, &parsed, &inputs, &mut err).map(|s| MediationBackend::Soap(Box::new(s)))
        }
    };
    if parsed.request.is_none() && (parsed.response.is_some() || !parsed.faults.is_empty()) {
        err("response".into(), "`response` and `faults` belong to a SOAP mediation (`request`)".into());
    }
    match backend {
        Some(backend) if errors.is_empty() => {
            Ok(Mediation { name: name.to_string(), inputs, reads_body, backend, script })
        }
        _ => Err(errors),
    }
}

fn input_specs(
    sections: &BTreeMap<String, spec::InputSection>,
    err: &mut impl FnMut(String, String),
) -> Vec<InputSpec> {
    let mut specs = Vec::new();
    for (name, s) in sections {
        let path = format!("inputs.{name}");
        let mut ok = true;
        if !is_variable_name(name) {
            err(
                path.clone(),
                "an input name is a template variable: letters, digits and `_`, not first a digit".into(),
            );
            ok = false;
        }
        let source = match s.from.as_str() {
            "path" => Source::Path,
            "query" => Source::Query,
            "header" => Source::Header,
            "body" => Source::Body,
            other => {
                err(format!("{path}.from"), format!("`{other}` is not one of path, query, header, body"));
                ok = false;
                Source::Path
            }
        };
        let Some(ty) = InputType::parse(&s.ty) else {
            err(format!("{path}.type"), format!("`{}` is not one of string, integer, number, boolean", s.ty));
            continue;
        };
        let mut key = s.name.clone().unwrap_or_else(|| name.clone());
        if source == Source::Header {
            key = key.to_ascii_lowercase();
            if http::HeaderName::from_bytes(key.as_bytes()).is_err() {
                err(format!("{path}.name"), format!("`{key}` is not a header name"));
                ok = false;
            } else if key == "authorization" || key == "cookie" {
                err(format!("{path}.name"), format!("`{key}` carries credentials: it is never a mediation input"));
                ok = false;
            }
        }
        let pattern = match &s.pattern {
            None => None,
            Some(p) => match Regex::new(&format!("^(?:{p})$")) {
                Ok(r) => Some(r),
                Err(e) => {
                    err(format!("{path}.pattern"), format!("not a valid regular expression: {e}"));
                    ok = false;
                    None
                }
            },
        };
        let typed = |v: &Value| -> Option<Value> {
            match v {
                Value::String(text) => ty.parse_text(text),
                Value::Number(n) if ty == InputType::Integer => n.as_i64().map(Value::from),
                Value::Number(_) if ty == InputType::Number => Some(v.clone()),
                Value::Bool(_) if ty == InputType::Boolean => Some(v.clone()),
                _ => None,
            }
        };
        let mut allowed = Vec::new();
        for (i, v) in s.allowed.iter().enumerate() {
            match typed(v) {
                Some(v) => allowed.push(v),
                None => {
                    err(format!("{path}.enum[{i}]"), format!("is not of type {}", ty.label()));
                    ok = false;
                }
            }
        }
        let default = match &s.default {
            None => None,
            Some(v) => match typed(v) {
                Some(v) if allowed.is_empty() || allowed.contains(&v) => Some(v),
                Some(_) => {
                    err(format!("{path}.default"), "is not one of the `enum` values".into());
                    ok = false;
                    None
                }
                None => {
                    err(format!("{path}.default"), format!("is not of type {}", ty.label()));
                    ok = false;
                    None
                }
            },
        };
        if source == Source::Path && (default.is_some() || s.optional) {
            err(path.clone(), "a path parameter is always present: no `default` or `optional`".into());
            ok = false;
        }
        if (s.min.is_some() || s.max.is_some()) && !matches!(ty, InputType::Integer | InputType::Number) {
            err(path.clone(), "`min` and `max` bound numbers: this input is not one".into());
            ok = false;
        }
        if let (Some(min), Some(max)) = (s.min, s.max) {
            if min > max {
                err(path.clone(), format!("`min` {min} is above `max` {max}"));
                ok = false;
            }
        }
        let max_length = s.max_length.unwrap_or(DEFAULT_MAX_LENGTH);
        if max_length == 0 || max_length > 65536 {
            err(format!("{path}.max_length"), format!("{max_length} is not between 1 and 65536"));
            ok = false;
        }
        if ok {
            specs.push(InputSpec {
                name: name.clone(),
                source,
                key,
                ty,
                pattern,
                allowed,
                min: s.min,
                max: s.max,
                max_length,
                default,
                optional: s.optional,
            });
        }
    }
    specs
}

fn soap_mediation(
    dir: &Path,
    request: &spec::RequestSection,
    parsed: &spec::MediationFile,
    inputs: &[InputSpec],
    err: &mut impl FnMut(String, String),
) -> Option<SoapMediation> {
    let mut ok = true;
    let version = SoapVersion::parse(&request.soap.version);
    if version.is_none() {
        err("request.soap.version".into(), format!("`{}` is not \"1.1\" or \"1.2\"", request.soap.version));
        ok = false;
    }
    let action = &request.soap.action;
    if action.is_empty() || action.chars().any(|c| c.is_control() || c == '"') {
        err("request.soap.action".into(), "must be a non-empty URI without quotes".into());
        ok = false;
    }
    let path = &request.soap.path;
    if !path.starts_with('/') || path.parse::<http::uri::PathAndQuery>().is_err() {
        err("request.soap.path".into(), format!("`{path}` is not an absolute path (`/Service.svc`)"));
        ok = false;
    }
    let template_file = dir.join(&request.template);
    let template = match read_in_folder(dir, &request.template, MAX_FOLDER_FILE_BYTES) {
        Ok(t) => Some(t),
        Err(message) => {
            err("request.template".into(), message);
            ok = false;
            None
        }
    };

    let response = match &parsed.response {
        None => {
            err("response".into(), "required for a SOAP mediation: `root` and `fields`".into());
            None
        }
        Some(r) => response_mapping(r, err),
    };
    ok &= response.is_some();

    let mut faults = Vec::new();
    for (i, f) in parsed.faults.iter().enumerate() {
        let path = format!("faults[{i}]");
        if !(400..=599).contains(&f.status) {
            err(format!("{path}.status"), format!("{} is not an error status (400 to 599)", f.status));
            ok = false;
        }
        if !is_problem_code(&f.problem) {
            err(format!("{path}.problem"), format!("`{}` is not a problem code (snake_case, at most 40)", f.problem));
            ok = false;
            continue;
        }
        // Codes live as long as the process, like the rest of the config.
        let code: &'static str = Box::leak(f.problem.clone().into_boxed_str());
        match FaultRule::new(&f.code, f.status, code) {
            Ok(rule) => faults.push(rule),
            Err(e) => {
                err(format!("{path}.code"), e);
                ok = false;
            }
        }
    }

    let max_bytes = parsed.limits.xml_max_bytes.unwrap_or(DEFAULT_XML_MAX_BYTES);
    if max_bytes == 0 || max_bytes > XML_MAX_BYTES_LIMIT {
        err("limits.xml_max_bytes".into(), format!("{max_bytes} is not between 1 and {XML_MAX_BYTES_LIMIT}"));
        ok = false;
    }
    let max_depth = parsed.limits.xml_max_depth.unwrap_or(DEFAULT_XML_MAX_DEPTH);
    if !(3..=XML_MAX_DEPTH_LIMIT).contains(&max_depth) {
        err("limits.xml_max_depth".into(), format!("{max_depth} is not between 3 and {XML_MAX_DEPTH_LIMIT}"));
        ok = false;
    }
    if !ok {
        return None;
    }
    let limits = XmlLimits { max_bytes, max_depth };
    let version = version?;
    let soap =
        SoapMediation::new(version, action.clone(), path.clone(), template?, response?, faults, limits).map_err(|e| {
            err("request.template".into(), format!("{}: {e}", template_file.display()));
        });
    let soap = soap.ok()?;
    if let Err(e) = soap.check_template(&inputs::sample(inputs)) {
        err("request.template".into(), format!("{}: {e}", template_file.display()));
        return None;
    }
    Some(soap)
}

fn sql_mediation(
    s: &spec::SqlSection,
    inputs: &[InputSpec],
    err: &mut impl FnMut(String, String),
) -> Option<SqlMediation> {
    let mut ok = true;
    if s.query.trim().is_empty() {
        err("sql.query".into(), "required: the one statement this mediation runs".into());
        ok = false;
    } else if !sql::is_single_statement(&s.query) {
        err("sql.query".into(), "one statement only: nothing may follow a `;`".into());
        ok = false;
    }
    for (i, name) in s.params.iter().enumerate() {
        if !inputs.iter().any(|input| &input.name == name) {
            err(format!("sql.params[{i}]"), format!("`{name}` is not a declared input"));
            ok = false;
        }
    }
    let shape = match s.shape.as_deref().unwrap_or("object") {
        "object" => Shape::Object,
        "array" => Shape::Array,
        other => {
            err("sql.shape".into(), format!("`{other}` is not `object` (first row) or `array`"));
            ok = false;
            Shape::Object
        }
    };
    let default_rows = if shape == Shape::Object { 1 } else { sql::DEFAULT_MAX_ROWS };
    let max_rows = s.max_rows.unwrap_or(default_rows);
    if max_rows == 0 || max_rows > sql::MAX_ROWS_LIMIT {
        err("sql.max_rows".into(), format!("{max_rows} is not between 1 and {}", sql::MAX_ROWS_LIMIT));
        ok = false;
    }
    let mut columns = BTreeMap::new();
    for (column, ty) in &s.columns {
        match InputType::parse(ty) {
            Some(ty) => {
                columns.insert(column.clone(), ty);
            }
            None => {
                err(format!("sql.columns.{column}"), format!("`{ty}` is not one of string, integer, number, boolean"));
                ok = false;
            }
        }
    }
    ok.then(|| SqlMediation {
        database: s.database.clone(),
        statement: s.query.clone(),
        params: s.params.clone(),
        shape,
        max_rows,
        columns,
    })
}

fn response_mapping(r: &spec::ResponseSection, err: &mut impl FnMut(String, String)) -> Option<ResponseMapping> {
    let mut ok = true;
    for (prefix, uri) in &r.namespaces {
        if uri.is_empty() {
            err(format!("response.namespaces.{prefix}"), "a namespace is a non-empty URI".into());
            ok = false;
        }
    }
    let root = match Selector::parse(&r.root, &r.namespaces) {
        Ok(s) if s.attribute.is_none() && r.root.starts_with('/') => Some(s.steps),
        Ok(_) => {
            err("response.root".into(), "an absolute path to an element (`/s:Envelope/s:Body/c:Answer`)".into());
            None
        }
        Err(e) => {
            err("response.root".into(), e);
            None
        }
    };
    ok &= root.is_some();
    if r.fields.is_empty() {
        err("response.fields".into(), "declare at least one output field".into());
        ok = false;
    }
    let mut fields = Vec::new();
    for (name, f) in &r.fields {
        let path = format!("response.fields.{name}");
        if name == "gateway_status" {
            err(path.clone(), "`gateway_status` is the gateway's (degraded answers)".into());
            ok = false;
        }
        let selector = match Selector::parse(&f.select, &r.namespaces) {
            Ok(s) if !f.select.starts_with('/') => Some(s),
            Ok(_) => {
                err(format!("{path}.select"), "relative to `root`: no leading `/`".into());
                None
            }
            Err(e) => {
                err(format!("{path}.select"), e);
                None
            }
        };
        let ty = InputType::parse(&f.ty);
        if ty.is_none() {
            err(format!("{path}.type"), format!("`{}` is not one of string, integer, number, boolean", f.ty));
        }
        let (Some(selector), Some(ty)) = (selector, ty) else {
            ok = false;
            continue;
        };
        let default = match &f.default {
            None => None,
            Some(v) => {
                let typed = match v {
                    Value::String(s) => mapping::typed(ty, s),
                    Value::Array(items) if f.array => {
                        let items: Option<Vec<Value>> =
                            items.iter().map(|i| mapping::typed(ty, &plain_text(i))).collect();
                        items.map(Value::Array)
                    }
                    other if !f.array => mapping::typed(ty, &plain_text(other)),
                    _ => None,
                };
                if typed.is_none() {
                    let expected = if f.array {
                        format!("a list of type {}", ty.label())
                    } else {
                        format!("of type {}", ty.label())
                    };
                    err(format!("{path}.default"), format!("is not {expected}"));
                    ok = false;
                }
                typed
            }
        };
        fields.push(Field { name: name.clone(), selector, ty, default, array: f.array });
    }
    if !ok {
        return None;
    }
    Some(ResponseMapping { root: root?, fields })
}

fn plain_text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// Reads a file named in `mediation.yaml`, which must stay inside the folder.
fn read_in_folder(dir: &Path, name: &str, limit: u64) -> Result<String, String> {
    let relative = Path::new(name);
    if relative.is_absolute() || relative.components().any(|c| matches!(c, std::path::Component::ParentDir)) {
        return Err(format!("`{name}` must be a file inside the mediation folder"));
    }
    let file = dir.join(relative);
    let size = std::fs::metadata(&file).map_err(|e| format!("cannot read `{}`: {e}", file.display()))?.len();
    if size > limit {
        return Err(format!("`{}` is over {limit} bytes", file.display()));
    }
    std::fs::read_to_string(&file).map_err(|e| format!("cannot read `{}`: {e}", file.display()))
}

fn is_variable_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
        && name.len() <= 64
}

fn is_problem_code(code: &str) -> bool {
    !code.is_empty()
        && code.len() <= 40
        && code.starts_with(|c: char| c.is_ascii_lowercase())
        && code.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
}
