//! `seawall test plugins/NAME`: a mediation's golden cases, run offline. Each case in
//! `tests/*.yaml` gives the caller's request, the backend request it must become (envelope, or
//! statement and bound parameters), the backend's canned answer (or the rows seeded into an
//! in-memory SQLite database the statement then runs on), and the JSON (or problem) the caller
//! must get. No network, no gateway: the same input checks, template, statement and mapping the
//! gateway runs. `--update` rewrites the expectations from what the mediation does now (the file
//! is rewritten: comments are lost).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use std::time::Duration;

use super::inputs::{self, RawRequest};
use super::sql::SqlMediation;
use super::{Mediation, MediationBackend, MEDIATION_FILE};
use crate::config::{DatabaseConfig, Driver};
use crate::database::{Database, Param};
use crate::problem::Problem;
use crate::routing::PathParams;

/// The folder of golden cases inside a mediation folder.
pub const CASES_DIR: &str = "tests";

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Case {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    pub request: CaseRequest,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backend: Option<CaseBackend>,
    pub expect: Expected,
}

/// The caller's request.
#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct CaseRequest {
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub path: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub query: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body: Option<Value>,
}

#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct CaseBackend {
    /// The request the backend must receive (absent when the inputs are refused).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request: Option<BackendRequestCase>,
    /// The backend's canned answer (SOAP).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub answer: Option<CannedAnswer>,
    /// Statements run first on the in-memory SQLite database (SQL): the rows to find.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub seed: Vec<String>,
}

/// The request a backend must receive: an HTTP request (SOAP) or a statement (SQL).
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(untagged)]
pub enum BackendRequestCase {
    Http(HttpRequestCase),
    Sql(SqlRequestCase),
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct HttpRequestCase {
    pub path: String,
    pub headers: BTreeMap<String, String>,
    pub body: String,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SqlRequestCase {
    pub query: String,
    pub params: Vec<Value>,
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct CannedAnswer {
    #[serde(default = "ok_status")]
    pub status: u16,
    pub body: String,
}

fn ok_status() -> u16 {
    200
}

/// What the caller gets: the status, and the JSON (for a problem: its `code`, and `input`).
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Expected {
    pub status: u16,
    #[serde(default)]
    pub body: Value,
}

/// How one case went.
#[derive(Debug)]
pub struct CaseResult {
    pub file: PathBuf,
    /// Empty when the case passed; otherwise what differs, as unified diffs.
    pub failures: Vec<String>,
    pub updated: bool,
}

/// The mediation folders under `path`: `path` itself when it holds a mediation, else each
/// subfolder that does (so `seawall test plugins/` runs them all).
pub fn folders(path: &Path) -> Result<Vec<PathBuf>, String> {
    if path.join(MEDIATION_FILE).is_file() {
        return Ok(vec![path.to_path_buf()]);
    }
    let entries = std::fs::read_dir(path).map_err(|e| format!("cannot read `{}`: {e}", path.display()))?;
    let mut folders: Vec<PathBuf> =
        entries.flatten().map(|e| e.path()).filter(|p| p.join(MEDIATION_FILE).is_file()).collect();
    folders.sort();
    if folders.is_empty() {
        return Err(format!("`{}` holds no {MEDIATION_FILE} (nor do its subfolders)", path.display()));
    }
    Ok(folders)
}

/// Loads the mediation in `folder` and runs its cases; errors loading either are returned whole.
pub fn run_folder(folder: &Path, update: bool) -> Result<Vec<CaseResult>, Vec<String>> {
    let name = folder.file_name().and_then(|n| n.to_str()).unwrap_or_default();
    let parent = folder.parent().unwrap_or(Path::new("."));
    let mediation =
        super::load(parent, name).map_err(|errors| errors.iter().map(|e| e.to_string()).collect::<Vec<_>>())?;
    let cases_dir = folder.join(CASES_DIR);
    let mut files: Vec<PathBuf> = match std::fs::read_dir(&cases_dir) {
        Ok(entries) => entries
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "yaml" || x == "yml"))
            .collect(),
        Err(e) => return Err(vec![format!("{}: cannot read: {e}", cases_dir.display())]),
    };
    files.sort();
    if files.is_empty() {
        return Err(vec![format!("{}: no golden cases (*.yaml)", cases_dir.display())]);
    }
    let mut results = Vec::new();
    let mut errors = Vec::new();
    for file in files {
        match run_case(&mediation, &file, update) {
            Ok(result) => results.push(result),
            Err(e) => errors.push(format!("{}: {e}", file.display())),
        }
    }
    if errors.is_empty() {
        Ok(results)
    } else {
        Err(errors)
    }
}

fn run_case(mediation: &Mediation, file: &Path, update: bool) -> Result<CaseResult, String> {
    let text = std::fs::read_to_string(file).map_err(|e| format!("cannot read: {e}"))?;
    // serde_yaml's message names the path, line and column itself.
    let mut case: Case = serde_yaml_ng::from_str(&text).map_err(|e| e.to_string())?;
    let (backend_request, actual) = play(mediation, &case)?;

    let mut failures = Vec::new();
    let expected_request = case.backend.as_ref().and_then(|b| b.request.clone());
    if expected_request != backend_request {
        failures.push(diff("backend request", &yaml(&expected_request), &yaml(&backend_request)));
    }
    if case.expect != actual {
        failures.push(diff("answer", &yaml(&case.expect), &yaml(&actual)));
    }
    let mut updated = false;
    if update && !failures.is_empty() {
        match (&mut case.backend, backend_request) {
            (Some(backend), request) => backend.request = request,
            (None, Some(request)) => case.backend = Some(CaseBackend { request: Some(request), ..Default::default() }),
            (None, None) => {}
        }
        case.expect = actual;
        let text = serde_yaml_ng::to_string(&case).map_err(|e| e.to_string())?;
        std::fs::write(file, text).map_err(|e| format!("cannot write: {e}"))?;
        failures.clear();
        updated = true;
    }
    Ok(CaseResult { file: file.to_path_buf(), failures, updated })
}

/// The backend request the case's input becomes, and what the caller gets.
fn play(mediation: &Mediation, case: &Case) -> Result<(Option<BackendRequestCase>, Expected), String> {
    let pairs: Vec<(&str, &str)> = case.request.path.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let params = PathParams::from_pairs(&pairs);
    let query = (!case.request.query.is_empty()).then(|| {
        let mut serializer = form_urlencoded::Serializer::new(String::new());
        serializer.extend_pairs(&case.request.query);
        serializer.finish()
    });
    let mut headers = http::HeaderMap::new();
    for (name, value) in &case.request.headers {
        let name = http::HeaderName::from_bytes(name.as_bytes()).map_err(|_| format!("`request.headers.{name}`"))?;
        let value = http::HeaderValue::from_str(value).map_err(|_| format!("`request.headers.{name}` value"))?;
        headers.append(name, value);
    }
    let body = case.request.body.as_ref().map(|b| serde_json::to_vec(b).unwrap_or_default());
    let raw = RawRequest { params: &params, query: query.as_deref(), headers: &headers, body: body.as_deref() };
    let inputs = match inputs::extract(&mediation.inputs, &raw) {
        Ok(inputs) => inputs,
        Err(e) => {
            let problem = Problem::InvalidInput { input: e.input, reason: e.reason };
            return Ok((None, problem_answer(&problem)));
        }
    };
    let hooked = match mediation.before(&inputs) {
        Ok(hooked) => hooked,
        Err(problem) => return Ok((None, problem_answer(&problem))),
    };
    let inputs = hooked.unwrap_or(inputs);
    let (sent, mut actual) = play_backend(mediation, case, &inputs)?;
    if actual.status == 200 {
        actual = match mediation.after(std::mem::take(&mut actual.body), &inputs) {
            Ok(body) => Expected { status: 200, body },
            Err(problem) => problem_answer(&problem),
        };
    }
    Ok((sent, actual))
}

/// The backend request the (hooked) inputs become, and the mapped answer.
fn play_backend(
    mediation: &Mediation,
    case: &Case,
    inputs: &super::inputs::Inputs,
) -> Result<(Option<BackendRequestCase>, Expected), String> {
    let soap = match &mediation.backend {
        MediationBackend::Soap(soap) => soap,
        MediationBackend::Sql(sql) => return play_sql(sql, case, inputs),
    };
    let envelope = match soap.envelope(inputs) {
        Ok(envelope) => envelope,
        Err(problem) => return Ok((None, problem_answer(&problem))),
    };
    let text = |v: &http::HeaderValue| v.to_str().unwrap_or_default().to_string();
    let mut sent_headers = BTreeMap::from([("content-type".to_string(), text(&soap.content_type))]);
    if let Some(action) = &soap.soap_action {
        sent_headers.insert("soapaction".into(), text(action));
    }
    let sent = BackendRequestCase::Http(HttpRequestCase {
        path: soap.path.clone(),
        headers: sent_headers,
        body: String::from_utf8_lossy(&envelope).into_owned(),
    });
    let answer = case
        .backend
        .as_ref()
        .and_then(|b| b.answer.as_ref())
        .ok_or("`backend.answer` is required: the backend's canned answer (status, body)")?;
    let actual = match soap.answer(answer.status, answer.body.as_bytes()) {
        Ok(value) => Expected { status: 200, body: value },
        Err(problem) => problem_answer(&problem),
    };
    Ok((Some(sent), actual))
}

/// A SQL case: the statement runs on an in-memory SQLite database seeded by `backend.seed`.
fn play_sql(
    sql: &SqlMediation,
    case: &Case,
    inputs: &super::inputs::Inputs,
) -> Result<(Option<BackendRequestCase>, Expected), String> {
    let params = sql.params(inputs);
    let sent = BackendRequestCase::Sql(SqlRequestCase {
        query: sql.statement.clone(),
        params: params.iter().map(Param::to_json).collect(),
    });
    let seed = case.backend.as_ref().map(|b| b.seed.as_slice()).unwrap_or_default();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start a runtime: {e}"))?;
    let rows = runtime.block_on(async {
        let database = Database::new(DatabaseConfig {
            name: "golden".into(),
            url: "sqlite::memory:".into(),
            driver: Driver::Sqlite,
            // One connection: an in-memory database lives in its connection.
            max_connections: 1,
            acquire_timeout: Duration::from_secs(5),
            statement_timeout: Duration::from_secs(5),
        });
        for (i, statement) in seed.iter().enumerate() {
            database.execute(statement).await.map_err(|e| format!("`backend.seed[{i}]`: {e}"))?;
        }
        Ok::<_, String>(database.fetch(&sql.statement, params, sql.rows_to_fetch(), Duration::from_secs(10)).await)
    })?;
    let actual = match rows.and_then(|rows| sql.answer(rows)) {
        Ok(value) => Expected { status: 200, body: value },
        Err(problem) => problem_answer(&problem),
    };
    Ok((Some(sent), actual))
}

/// A problem as a case states it: status, `code` (and the refused `input`).
fn problem_answer(problem: &Problem) -> Expected {
    let mut body = serde_json::json!({ "code": problem.code() });
    if let Problem::InvalidInput { input, .. } = problem {
        body["input"] = Value::String(input.clone());
    }
    Expected { status: problem.status(), body }
}

fn yaml<T: Serialize>(value: &T) -> String {
    serde_yaml_ng::to_string(value).unwrap_or_default()
}

fn diff(what: &str, expected: &str, actual: &str) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "{what} differs (- expected, + actual):");
    let diff = similar::TextDiff::from_lines(expected, actual);
    let _ = write!(out, "{}", diff.unified_diff().context_radius(3).header("expected", "actual"));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shipped_crm_customer_cases_pass() {
        let folder = Path::new(env!("CARGO_MANIFEST_DIR")).join("plugins/crm-customer");
        let results = run_folder(&folder, false).unwrap_or_else(|e| panic!("{e:#?}"));
        assert!(results.len() >= 3);
        for result in results {
            assert!(result.failures.is_empty(), "{}: {}", result.file.display(), result.failures.join("\n"));
        }
    }

    #[test]
    fn a_wrong_expectation_fails_with_a_diff_and_update_rewrites_it() {
        let dir = tempfile::tempdir().unwrap();
        let folder = dir.path().join("crm-customer");
        let shipped = Path::new(env!("CARGO_MANIFEST_DIR")).join("plugins/crm-customer");
        std::fs::create_dir_all(folder.join(CASES_DIR)).unwrap();
        for file in [MEDIATION_FILE, "request.xml.j2", "script.lua"] {
            std::fs::copy(shipped.join(file), folder.join(file)).unwrap();
        }
        let case = folder.join(CASES_DIR).join("found.yaml");
        std::fs::write(
            &case,
            r#"
request: { path: { customerId: "42" } }
backend:
  answer:
    body: >-
      <s:Envelope xmlns:s="http://schemas.xmlsoap.org/soap/envelope/"><s:Body>
      <GetCustomerResponse xmlns="urn:crm"><Customer><Name>Ada</Name></Customer></GetCustomerResponse>
      </s:Body></s:Envelope>
expect: { status: 200, body: { name: Bob } }
"#,
        )
        .unwrap();
        let results = run_folder(&folder, false).unwrap();
        let failures = results[0].failures.join("\n");
        assert!(failures.contains("-  name: Bob") && failures.contains("+  name: Ada"), "{failures}");
        assert!(failures.contains("backend request differs"), "no expected request yet: {failures}");

        let results = run_folder(&folder, true).unwrap();
        assert!(results[0].updated && results[0].failures.is_empty());
        let results = run_folder(&folder, false).unwrap();
        assert!(results[0].failures.is_empty(), "{:?}", results[0].failures);
        let rewritten = std::fs::read_to_string(&case).unwrap();
        assert!(rewritten.contains("<crm:CustomerId>0000000042</crm:CustomerId>") && rewritten.contains("name: Ada"));
    }

    #[test]
    fn a_folder_without_cases_or_a_broken_case_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        assert!(folders(dir.path()).unwrap_err().contains("holds no mediation.yaml"));
        let folder = dir.path().join("crm-customer");
        let shipped = Path::new(env!("CARGO_MANIFEST_DIR")).join("plugins/crm-customer");
        std::fs::create_dir_all(&folder).unwrap();
        for file in [MEDIATION_FILE, "request.xml.j2", "script.lua"] {
            std::fs::copy(shipped.join(file), folder.join(file)).unwrap();
        }
        assert!(run_folder(&folder, false).unwrap_err()[0].contains("cannot read"));
        std::fs::create_dir(folder.join(CASES_DIR)).unwrap();
        std::fs::write(folder.join(CASES_DIR).join("x.yaml"), "request: {}\nexpect: { status: 200 }\nextra: 1\n")
            .unwrap();
        let errors = run_folder(&folder, false).unwrap_err();
        assert!(errors[0].contains("x.yaml") && errors[0].contains("extra"), "{errors:?}");
    }
}
