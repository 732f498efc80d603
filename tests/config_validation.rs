//! Config validation as users meet it: `seawall::config::load_str` / `load_file`,
//! `seawall::build` (TLS material), and `seawall validate -c FILE` on the command line.
//!
//! Every check asserts the YAML path and a fragment of the message a user reads, and where the
//! contract promises "every error", the exact count.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use seawall::config::{self, Config, ConfigError, ProcessEnv};

/// An environment made of the given pairs only, so no test depends on the process environment.
fn env_of(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
    let map: HashMap<String, String> = pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    move |name: &str| map.get(name).cloned()
}

fn load(text: &str) -> Result<Config, Vec<ConfigError>> {
    config::load_str(text, &env_of(&[]))
}

fn errors_of(text: &str) -> Vec<ConfigError> {
    match load(text) {
        Ok(config) => panic!("expected errors, the config is valid: {}", config.summary()),
        Err(errors) => errors,
    }
}

fn render(errors: &[ConfigError]) -> String {
    errors.iter().map(|e| format!("  {e}")).collect::<Vec<_>>().join("\n")
}

/// Panics unless one error has exactly `path` and a message holding every fragment.
fn assert_error(errors: &[ConfigError], path: &str, fragments: &[&str]) {
    let found = errors.iter().any(|e| e.path == path && fragments.iter().all(|f| e.message.contains(f)));
    assert!(found, "no error at `{path}` mentioning {fragments:?}; got:\n{}", render(errors));
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

/// `seawall validate -c FILE`, from the crate root as the tests' working directory.
fn validate_cli(file: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_seawall"))
        .args(["validate", "-c"])
        .arg(file)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("run seawall validate")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// The 1-based line of the first occurrence of `needle` in `text`.
fn line_of(text: &str, needle: &str) -> usize {
    text.lines()
        .position(|l| l.contains(needle))
        .map(|i| i + 1)
        .unwrap_or_else(|| panic!("`{needle}` is not in the config"))
}

/// One error the multi-error config must produce.
struct Expected {
    path: &'static str,
    fragments: &'static [&'static str],
    /// Found by the schema (serde) step rather than by semantic validation.
    schema: bool,
}

const EXPECTED: &[Expected] = &[
    Expected { path: "listeners[0].name", fragments: &["`LISTENER_NAME`", "not set"], schema: false },
    Expected {
        path: "listeners[1].address",
        fragments: &["`localhost:8081`", "not an `ip:port` address"],
        schema: false,
    },
    Expected { path: "admin.address", fragments: &["127.0.0.1:18080", "public listener"], schema: false },
    Expected { path: "upstreams.empty.targets", fragments: &["at least one"], schema: false },
    Expected { path: "routes[0].match.methd", fragments: &["unknown field `methd`", "`method`"], schema: true },
    Expected { path: "routes[1].upstream", fragments: &["unknown upstream `billing`"], schema: false },
    Expected { path: "routes[2].timeout_ms", fragments: &["0 is not a deadline"], schema: false },
    Expected { path: "routes[3]", fragments: &["missing field `timeout_ms`"], schema: true },
    Expected { path: "routes[4].timeout_ms", fragments: &["60000", "Genesys"], schema: false },
    Expected { path: "routes[5].id", fragments: &["duplicate route id `slow`"], schema: false },
    Expected { path: "routes[7].match.path", fragments: &["ambiguous", "`items_any`"], schema: false },
    Expected { path: "routes[9].match.path", fragments: &["ambiguous", "`a_x`"], schema: false },
    Expected { path: "routes[10].match.path", fragments: &["`/b/x{y}`"], schema: false },
    Expected { path: "caching", fragments: &["unknown section `caching`"], schema: true },
];

/// A config holding one of each mistake in [`EXPECTED`]; `with_schema_errors: false` leaves out
/// the ones serde finds (unknown key, missing `timeout_ms`, unknown section) and keeps every
/// index the same.
fn multi_error_config(with_schema_errors: bool) -> String {
    let method_key = if with_schema_errors { "methd" } else { "method" };
    let timeout = if with_schema_errors { "" } else { "    timeout_ms: 1000\n" };
    let section = if with_schema_errors { "caching:\n  max_bytes: 1024\n" } else { "" };
    format!(
        r#"listeners:
  - name: "${{LISTENER_NAME}}"
    address: 127.0.0.1:18080
  - name: broken
    address: localhost:8081
admin:
  address: 127.0.0.1:18080
upstreams:
  crm:
    targets: [127.0.0.1:9001]
  empty:
    targets: []
routes:
  - id: lookup
    match: {{ {method_key}: GET, path: "/accounts/{{id}}" }}
    upstream: crm
    timeout_ms: 1000
  - id: billing
    match: {{ method: GET, path: /billing }}
    upstream: billing
    timeout_ms: 1000
  - id: zero
    match: {{ method: GET, path: /zero }}
    upstream: crm
    timeout_ms: 0
  - id: no_timeout
    match: {{ method: GET, path: /no-timeout }}
    upstream: crm
{timeout}  - id: slow
    match: {{ method: GET, path: /slow }}
    upstream: crm
    timeout_ms: 60000
  - id: slow
    match: {{ method: GET, path: /other }}
    upstream: crm
    timeout_ms: 1000
  - id: items_any
    match: {{ method: [GET, POST], path: "/items/{{x}}" }}
    upstream: crm
    timeout_ms: 1000
  - id: items_get
    match: {{ method: GET, path: "/items/{{y}}" }}
    upstream: crm
    timeout_ms: 1000
  - id: a_x
    match: {{ method: GET, path: "/a/{{x}}" }}
    upstream: crm
    timeout_ms: 1000
  - id: a_y
    match: {{ method: GET, path: "/a/{{y}}" }}
    upstream: crm
    timeout_ms: 1000
  - id: bad_template
    match: {{ method: GET, path: "/b/x{{y}}" }}
    upstream: crm
    timeout_ms: 1000
{section}"#
    )
}

/// Every expectation not met, and a wrong count, in one message.
fn check_expected(errors: &[ConfigError], expected: &[&Expected]) -> Vec<String> {
    let mut problems: Vec<String> = expected
        .iter()
        .filter(|x| !errors.iter().any(|e| e.path == x.path && x.fragments.iter().all(|f| e.message.contains(f))))
        .map(|x| format!("missing: `{}` mentioning {:?}", x.path, x.fragments))
        .collect();
    if errors.len() != expected.len() {
        problems.push(format!("expected {} errors, got {}", expected.len(), errors.len()));
    }
    problems
}

#[test]
fn every_error_in_one_file_is_reported_with_its_path() {
    let text = multi_error_config(true);
    let errors = errors_of(&text);
    let expected: Vec<&Expected> = EXPECTED.iter().collect();
    let mut problems = check_expected(&errors, &expected);
    // The parser knows where the unknown key is.
    let methd_line = line_of(&text, "methd");
    match errors.iter().find(|e| e.path == "routes[0].match.methd") {
        Some(e) if e.location.map(|(line, _)| line) == Some(methd_line) => {}
        Some(e) => problems
            .push(format!("`routes[0].match.methd` should be located on line {methd_line}, is at {:?}", e.location)),
        None => {}
    }
    assert!(problems.is_empty(), "{}\nreported:\n{}", problems.join("\n"), render(&errors));
}

#[test]
fn semantic_errors_are_all_reported_together_when_the_schema_is_clean() {
    let errors = errors_of(&multi_error_config(false));
    let expected: Vec<&Expected> = EXPECTED.iter().filter(|x| !x.schema).collect();
    let problems = check_expected(&errors, &expected);
    assert!(problems.is_empty(), "{}\nreported:\n{}", problems.join("\n"), render(&errors));
}

#[test]
fn validate_prints_every_error_prefixed_by_the_file_name_then_the_count() {
    let dir = tempfile::tempdir().unwrap();
    let file = write(dir.path(), "broken.yaml", &multi_error_config(false));
    let out = validate_cli(&file);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "stderr:\n{stderr}");
    assert_eq!(text(&out.stdout), "", "nothing on stdout for an invalid config");

    let prefix = format!("{}: ", file.display());
    let lines: Vec<&str> = stderr.lines().collect();
    let expected = EXPECTED.iter().filter(|x| !x.schema).count();
    assert_eq!(lines.len(), expected + 1, "stderr:\n{stderr}");
    for line in &lines {
        assert!(line.starts_with(&prefix), "not prefixed by the file: {line}");
    }
    assert_eq!(lines[expected], format!("{prefix}{expected} error(s)"));
    assert!(
        lines.contains(
            &format!("{prefix}`routes[1].upstream`: refers to unknown upstream `billing` (known: crm, empty)").as_str()
        ),
        "stderr:\n{stderr}"
    );
    assert!(
        lines.iter().any(|l| l.starts_with(&format!("{prefix}`routes[4].timeout_ms`: 60000 ms is above 59000"))),
        "stderr:\n{stderr}"
    );
}

#[test]
fn a_missing_variable_is_reported_once_and_named() {
    let errors = errors_of(
        r#"
listeners:
  - name: public
    address: "0.0.0.0:${PUBLIC_PORT}"
admin:
  address: 127.0.0.1:9090
"#,
    );
    assert_error(&errors, "listeners[0].address", &["`PUBLIC_PORT`", "not set", "${PUBLIC_PORT:-default}"]);
    // One mistake, one line: the unexpanded text is not checked again as an address.
    assert_eq!(errors.len(), 1, "reported:\n{}", render(&errors));
}

#[test]
fn variables_expand_with_defaults_and_set_values_win() {
    let env = env_of(&[("PUBLIC_PORT", "18081"), ("LISTENER", "edge")]);
    let config = config::load_str(
        r#"
listeners:
  - name: "${LISTENER:-public}"
    address: "127.0.0.1:${PUBLIC_PORT:-8080}"
admin:
  address: "127.0.0.1:${ADMIN_PORT:-19090}"
upstreams:
  crm:
    targets: ["${CRM_ADDR:-127.0.0.1:9001}"]
routes:
  - id: lookup
    match: { method: GET, path: "/accounts/{id}" }
    upstream: crm
    timeout_ms: 1000
"#,
        &env,
    )
    .unwrap_or_else(|errors| panic!("should be valid:\n{}", render(&errors)));
    assert_eq!(config.listeners[0].name, "edge");
    assert_eq!(config.listeners[0].address, "127.0.0.1:18081".parse().unwrap());
    assert_eq!(config.admin.address, "127.0.0.1:19090".parse().unwrap());
    assert_eq!(config.upstreams[0].targets, ["127.0.0.1:9001".parse().unwrap()]);
    assert_eq!(config.upstreams[0].host, "127.0.0.1:9001");
}

#[test]
fn double_dollar_writes_a_literal() {
    // The variable is set, so expanding it by mistake would show.
    let env = env_of(&[("NOT_A_VAR", "expanded")]);
    let config = config::load_str(
        r#"
listeners:
  - name: "cost-$5-$${NOT_A_VAR}"
    address: 127.0.0.1:8080
admin:
  address: 127.0.0.1:9090
"#,
        &env,
    )
    .unwrap_or_else(|errors| panic!("should be valid:\n{}", render(&errors)));
    assert_eq!(config.listeners[0].name, "cost-$5-${NOT_A_VAR}");
}

#[test]
fn a_yaml_syntax_error_gives_line_and_column() {
    let text =
        "listeners:\n  - name: public\n    address: 127.0.0.1:8080\nadmin:\n  address: 127.0.0.1:9090\n   oops: 1\n";
    let errors = errors_of(text);
    assert_eq!(errors.len(), 1, "reported:\n{}", render(&errors));
    let e = &errors[0];
    assert!(e.message.contains("not valid YAML"), "{e}");
    let (line, column) = e.location.expect("a syntax error has a location");
    assert_eq!(line, line_of(text, "oops"), "{e}");
    assert!(column > 1, "{e}");
    assert!(e.to_string().ends_with(&format!("(line {line}, column {column})")), "{e}");
}

#[test]
fn an_empty_file_says_so() {
    for text in ["", "\n", "# only a comment\n"] {
        let errors = errors_of(text);
        assert_eq!(errors.len(), 1, "{text:?}:\n{}", render(&errors));
        assert_eq!(errors[0].to_string(), "the config is empty", "{text:?}");
    }
}

#[test]
fn a_file_that_is_not_a_mapping_says_so() {
    for text in ["- listeners\n- admin\n", "just some text\n", "42\n"] {
        let errors = errors_of(text);
        assert_eq!(errors.len(), 1, "{text:?}:\n{}", render(&errors));
        assert!(errors[0].message.contains("must be a YAML mapping"), "{text:?}: {}", errors[0]);
    }
}

#[test]
fn a_missing_config_file_exits_1_with_cannot_read() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("absent.yaml");
    let out = validate_cli(&file);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "stderr:\n{stderr}");
    assert_eq!(text(&out.stdout), "");
    assert!(stderr.contains("cannot read"), "stderr:\n{stderr}");
    assert!(stderr.contains(&format!("`{}`", file.display())), "names the file: {stderr}");
    assert!(stderr.ends_with("1 error(s)\n"), "stderr:\n{stderr}");
}

#[test]
fn a_mediation_route_loads_its_folder_and_needs_an_upstream() {
    let route = |upstream: &str, extra: &str| {
        format!(
            r#"
listeners: [{{ name: public, address: 127.0.0.1:8080 }}]
admin: {{ address: 127.0.0.1:9090 }}
upstreams: {{ crm_soap: {{ targets: [127.0.0.1:9] }} }}
plugins_dir: plugins
routes:
  - id: customer
    match: {{ method: GET, path: "/customers/{{customerId}}" }}
    mediation: crm-customer
    timeout_ms: 3000
    {upstream}
    {extra}
"#
        )
    };
    let config = load(&route("upstream: crm_soap", "")).expect("the shipped SOAP mediation loads");
    assert_eq!(config.mediations.len(), 1);
    assert_eq!(config.routes[0].mediation, Some(0));

    let errors = errors_of(&route("", ""));
    assert_error(&errors, "routes[0].upstream", &["SOAP mediation calls an upstream"]);
    let errors = errors_of(&route("upstream: crm_soap", "upstream_path: /x"));
    assert_error(&errors, "routes[0].upstream_path", &["mediation builds the backend request"]);
    let errors = errors_of(&route("upstream: crm_soap", "").replace("crm-customer", "no-such-folder"));
    assert_error(&errors, "routes[0].mediation", &["plugins/no-such-folder/mediation.yaml", "cannot read"]);
    let errors = errors_of(&route("upstream: crm_soap", "").replace("crm-customer", "../conf"));
    assert_error(&errors, "routes[0].mediation", &["not a mediation folder name"]);
}

#[test]
fn database_settings_are_checked_with_their_paths() {
    let errors = errors_of(
        r#"
listeners: [{ name: public, address: 127.0.0.1:8080 }]
admin: { address: 127.0.0.1:9090 }
upstreams: { crm: { targets: [127.0.0.1:9] } }
databases:
  legacy: { url: "sqlserver://crm.internal:1433;database=crm" }
  odd: { url: "oracle://crm.internal/crm" }
  crm: { url: "postgres://crm.internal/crm" }
  missing: { url: "sqlite://no/such/file.db" }
  pg: { url: "postgres://app:s3cret@crm.internal:notaport/crm", max_connections: 0, acquire_timeout_ms: 0,
        statement_timeout_ms: 70000 }
"#,
    );
    assert_error(&errors, "databases.legacy.url", &["SQL Server is not supported by this version yet"]);
    assert_error(&errors, "databases.odd.url", &["postgres://", "mysql://", "sqlite:"]);
    assert_error(&errors, "databases.crm", &["also an upstream"]);
    assert_error(&errors, "databases.missing.url", &["does not exist"]);
    assert_error(&errors, "databases.pg.max_connections", &["between 1 and 1000"]);
    assert_error(&errors, "databases.pg.acquire_timeout_ms", &["between 1 and 59000"]);
    assert_error(&errors, "databases.pg.statement_timeout_ms", &["between 1 and 59000"]);
    assert!(!render(&errors).contains("s3cret"), "a URL's password is never quoted:\n{}", render(&errors));
}

#[test]
fn every_error_in_a_mediation_folder_is_reported_with_its_file_and_path() {
    let dir = tempfile::tempdir().unwrap();
    let folder = dir.path().join("broken");
    std::fs::create_dir(&folder).unwrap();
    write(
        &folder,
        "mediation.yaml",
        r#"
inputs:
  id: { from: cookie, type: string }
  n: { from: query, type: float }
  p: { from: path, type: string, pattern: "([0-9]", default: "1" }
  h: { from: header, type: string, name: Authorization }
  e: { from: query, type: integer, enum: [1, two] }
request:
  soap: { version: "1.3", action: "urn:a", path: "no-slash" }
  template: ../../etc/passwd
response:
  namespaces: { c: "urn:crm" }
  root: c:Answer
  fields:
    name: { select: x:Name, type: string }
    tier: { select: c:Tier, type: decimal }
    n: { select: c:N, type: integer, default: "many" }
faults:
  - { code: "*", status: 200, problem: Not-A-Code }
limits: { xml_max_bytes: 0, xml_max_depth: 1000 }
"#,
    );
    let config = format!(
        r#"
listeners: [{{ name: public, address: 127.0.0.1:8080 }}]
admin: {{ address: 127.0.0.1:9090 }}
upstreams: {{ crm_soap: {{ targets: [127.0.0.1:9] }} }}
plugins_dir: {}
routes:
  - {{ id: a, match: {{ path: "/a/{{id}}" }}, upstream: crm_soap, mediation: broken, timeout_ms: 1000 }}
  - {{ id: b, match: {{ path: "/b/{{id}}" }}, upstream: crm_soap, mediation: broken, timeout_ms: 1000 }}
"#,
        dir.path().display()
    );
    let errors = errors_of(&config);
    let file = folder.join("mediation.yaml").display().to_string();
    for (path, fragment) in [
        ("inputs.id.from", "`cookie` is not one of path, query, header, body"),
        ("inputs.n.type", "`float` is not one of"),
        ("inputs.p.pattern", "not a valid regular expression"),
        ("inputs.p", "a path parameter is always present"),
        ("inputs.h.name", "carries credentials"),
        ("inputs.e.enum[1]", "is not of type integer"),
        ("request.soap.version", "`1.3`"),
        ("request.soap.path", "not an absolute path"),
        ("request.template", "inside the mediation folder"),
        ("response.root", "absolute path"),
        ("response.fields.name.select", "prefix `x` is not declared"),
        ("response.fields.tier.type", "`decimal`"),
        ("response.fields.n.default", "is not of type integer"),
        ("faults[0].status", "200 is not an error status"),
        ("faults[0].problem", "`Not-A-Code`"),
        ("limits.xml_max_bytes", "0 is not between"),
        ("limits.xml_max_depth", "1000 is not between"),
    ] {
        let expected = format!("{file}: `{path}`: ");
        assert!(
            errors.iter().any(|e| e.path == "routes[0].mediation"
                && e.message.starts_with(&expected)
                && e.message.contains(fragment)),
            "no error `{path}` mentioning {fragment:?}; got:\n{}",
            render(&errors)
        );
    }
    assert!(errors.iter().all(|e| e.path != "routes[1].mediation"), "a folder's errors are reported once");

    // A template that renders broken XML is caught at start-up, not by the first caller.
    write(
        &folder,
        "mediation.yaml",
        r#"
inputs: { id: { from: path, type: string, pattern: "[0-9]+" } }
request: { soap: { version: "1.1", action: "urn:a", path: /svc }, template: t.xml }
response: { namespaces: { c: "urn:c" }, root: /c:A, fields: { x: { select: c:X, type: string } } }
"#,
    );
    write(
        &folder,
        "t.xml",
        "<s:Envelope xmlns:s=\"http://schemas.xmlsoap.org/soap/envelope/\"><s:Body>{{ id }}</s:Envelope>",
    );
    let errors = errors_of(&config);
    assert_error(&errors, "routes[0].mediation", &["t.xml", "does not render well-formed XML"]);
    write(&folder, "t.xml", "<Envelope>{{ idd }}</Envelope>");
    let errors = errors_of(&config);
    assert_error(&errors, "routes[0].mediation", &["t.xml", "undefined"]);
}

#[test]
fn cache_settings_are_checked_with_their_paths() {
    // One route with every mistake; parsed (an unknown key) or validated (the rest).
    let route = |extra: &str| {
        format!(
            r#"
listeners: [{{ name: public, address: 127.0.0.1:8080 }}]
admin: {{ address: 127.0.0.1:9090 }}
upstreams: {{ crm: {{ targets: ["127.0.0.1:9"] }} }}
routes:
  - id: a
    match: {{ method: POST, path: "/a/{{id}}" }}
    upstream: crm
    timeout_ms: 100
    cache:
      ttl_secs: 60
      origin_cache_control: sometimes
      vary: [path.nope, query., header.authorization, header.x-a, header.X-A, claim.tenant, cookie.x]
      stale_if_error_secs: 99999999999{extra}
"#
        )
    };
    let errors = errors_of(&format!(
        r#"{}
  - {{ id: b, match: {{ method: GET, path: "/b" }}, upstream: crm, timeout_ms: 100,
      cache: {{ ttl_secs: 0, origin_cache_control: ignore }} }}
cache_storage: {{ max_bytes: 1024, max_object_bytes: 99999999 }}
"#,
        route("\n      unknown: 1").trim_end()
    ));
    assert_error(&errors, "cache_storage.max_bytes", &["1024", "too small"]);
    assert_error(&errors, "cache_storage.max_object_bytes", &["99999999", "8 MiB"]);
    assert_error(&errors, "routes[0].cache.unknown", &["unknown field `unknown`"]);
    assert_error(&errors, "routes[1].cache.ttl_secs", &["ignore", "store nothing"]);
    assert_eq!(errors.len(), 4, "reported:\n{}", render(&errors));

    let errors = errors_of(&route(""));
    assert_error(&errors, "routes[0].cache", &["GET and HEAD", "neither"]);
    assert_error(&errors, "routes[0].cache.origin_cache_control", &["`sometimes`", "honor, ignore"]);
    assert_error(&errors, "routes[0].cache.vary[0]", &["`nope`", "known: id"]);
    assert_error(&errors, "routes[0].cache.vary[1]", &["path.NAME, query.NAME, header.NAME, claim.NAME"]);
    assert_error(&errors, "routes[0].cache.vary[2]", &["Authorization", "principal"]);
    assert_error(&errors, "routes[0].cache.vary[4]", &["listed twice"]);
    assert_error(&errors, "routes[0].cache.vary[5]", &["auth.jwt"]);
    assert_error(&errors, "routes[0].cache.vary[6]", &["`cookie.x`"]);
    assert_error(&errors, "routes[0].cache.stale_if_error_secs", &["more than a year"]);
    assert_eq!(errors.len(), 9, "reported:\n{}", render(&errors));
}

#[test]
fn a_tls_listener_reports_each_missing_file() {
    let dir = tempfile::tempdir().unwrap();
    let cert = dir.path().join("server.pem");
    let key = dir.path().join("server.key");
    let ca = dir.path().join("clients-ca.pem");
    let errors = errors_of(&format!(
        r#"
listeners:
  - name: public
    address: 127.0.0.1:8443
    tls:
      cert: {}
      key: {}
      client_auth:
        mode: required
        ca: [{}]
admin:
  address: 127.0.0.1:9090
"#,
        cert.display(),
        key.display(),
        ca.display()
    ));
    let named = |p: &Path| format!("`{}`", p.display());
    assert_error(&errors, "listeners[0].tls.cert", &["cannot read", &named(&cert)]);
    assert_error(&errors, "listeners[0].tls.key", &["cannot read", &named(&key)]);
    assert_error(&errors, "listeners[0].tls.client_auth.ca[0]", &["cannot read", &named(&ca)]);
    for e in &errors {
        assert!(e.path.starts_with("listeners[0].tls"), "unrelated error: {e}");
    }
}

const UPSTREAM_TLS_CONFIG: &str = r#"
listeners:
  - name: public
    address: 127.0.0.1:8080
admin:
  address: 127.0.0.1:9090
upstreams:
  crm:
    targets: [127.0.0.1:9443]
    tls: { sni: crm.internal, ca: CA_FILE }
routes:
  - id: lookup
    match: { method: GET, path: "/accounts/{id}" }
    upstream: crm
    timeout_ms: 1000
"#;

#[test]
fn a_missing_upstream_ca_file_is_reported() {
    // Relative: from the working directory (the crate root), where no such file is.
    let errors = errors_of(&UPSTREAM_TLS_CONFIG.replace("CA_FILE", "missing.pem"));
    assert_error(&errors, "upstreams.crm.tls.ca", &["cannot read", "`missing.pem`"]);
    assert_eq!(errors.len(), 1, "reported:\n{}", render(&errors));
}

#[test]
fn an_upstream_ca_that_is_not_pem_fails_validate() {
    let dir = tempfile::tempdir().unwrap();
    let ca = write(dir.path(), "crm-ca.pem", "this is not a certificate\n");
    let file = write(dir.path(), "seawall.yaml", &UPSTREAM_TLS_CONFIG.replace("CA_FILE", &ca.display().to_string()));

    // The file exists, so the config itself is fine; building the TLS material is not.
    let config =
        config::load_file(&file, &env_of(&[])).unwrap_or_else(|errors| panic!("should parse:\n{}", render(&errors)));
    let errors = match seawall::build(config) {
        Ok(_) => panic!("a CA file that is not PEM must not build"),
        Err(errors) => errors,
    };
    assert_error(&errors, "upstreams.crm.tls", &[&format!("`{}`", ca.display())]);

    let out = validate_cli(&file);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "stderr:\n{stderr}");
    assert_eq!(text(&out.stdout), "");
    let prefix = format!("{}: ", file.display());
    assert!(
        stderr.contains(&format!("{prefix}`upstreams.crm.tls`: ")) && stderr.contains(&ca.display().to_string()),
        "stderr:\n{stderr}"
    );
    assert!(stderr.ends_with(&format!("{prefix}1 error(s)\n")), "stderr:\n{stderr}");
}

#[test]
fn every_shipped_config_validates() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/conf");
    let mut checked = Vec::new();
    let mut failures = Vec::new();
    for entry in std::fs::read_dir(dir).expect("read conf/") {
        let path = entry.expect("list conf/").path();
        if path.extension().and_then(|e| e.to_str()) != Some("yaml") {
            continue;
        }
        let result = config::load_file(&path, &ProcessEnv).and_then(|c| seawall::build(c).map(drop));
        if let Err(errors) = result {
            failures.push(format!("{}:\n{}", path.display(), render(&errors)));
        }
        checked.push(path);
    }
    assert!(!checked.is_empty(), "no conf/*.yaml found in {dir}");
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn a_valid_config_exits_0_with_one_summary_line() {
    let dir = tempfile::tempdir().unwrap();
    let file = write(
        dir.path(),
        "seawall.yaml",
        r#"
listeners:
  - name: public
    address: 0.0.0.0:18080
admin:
  address: 127.0.0.1:19090
upstreams:
  crm:
    targets: [127.0.0.1:9001]
routes:
  - id: lookup
    match: { method: GET, path: "/accounts/{id}" }
    upstream: crm
    timeout_ms: 1000
  - id: note
    match: { method: POST, path: "/accounts/{id}/notes" }
    upstream: crm
    timeout_ms: 3000
"#,
    );
    let out = validate_cli(&file);
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "stderr:\n{}", text(&out.stderr));
    assert_eq!(
        stdout,
        format!("{}: valid: 1 listener(s), 1 upstream(s), 2 route(s); admin on 127.0.0.1:19090\n", file.display())
    );
}

#[test]
fn client_certificate_settings_are_checked_with_their_paths() {
    let dir = tempfile::tempdir().unwrap();
    let pem = write(dir.path(), "x.pem", "exists; parsed when the gateway is built\n");
    let p = pem.display();
    let errors = errors_of(&format!(
        r#"
listeners:
  - name: public
    address: 127.0.0.1:8443
    tls:
      cert: {p}
      key: {p}
      client_auth: {{ mode: sometimes, ca: [], allowed_names: [" "], pinned_sha256: ["AB:CD"] }}
  - name: plain
    address: 127.0.0.1:8080
admin:
  address: 127.0.0.1:9090
upstreams:
  crm: {{ targets: ["127.0.0.1:9"] }}
routes:
  - {{ id: a, match: {{ path: "/a" }}, auth: {{ client_cert: maybe }}, upstream: crm, timeout_ms: 100 }}
  - {{ id: b, match: {{ path: "/b" }}, auth: {{ client_cert: required, scopes_any: [x] }}, upstream: crm, timeout_ms: 100 }}
"#
    ));
    assert_error(&errors, "listeners[0].tls.client_auth.mode", &["`sometimes`", "required, optional"]);
    assert_error(&errors, "listeners[0].tls.client_auth.ca", &["required"]);
    assert_error(&errors, "listeners[0].tls.client_auth.allowed_names[0]", &["must not be empty"]);
    assert_error(&errors, "listeners[0].tls.client_auth.pinned_sha256[0]", &["64 hex digits"]);
    assert_error(&errors, "routes[0].auth.client_cert", &["`maybe`"]);
    assert_error(&errors, "routes[1].auth", &["`scopes_any` / `scopes_all` need `jwt`"]);
    assert_eq!(errors.len(), 6, "reported:\n{}", render(&errors));

    // Without any listener asking for certificates, a route cannot require one.
    let errors = errors_of(
        r#"
listeners: [{ name: plain, address: 127.0.0.1:8080 }]
admin: { address: 127.0.0.1:9090 }
upstreams: { crm: { targets: ["127.0.0.1:9"] } }
routes:
  - { id: a, match: { path: "/a" }, auth: { client_cert: required }, upstream: crm, timeout_ms: 100 }
"#,
    );
    assert_error(&errors, "routes[0].auth.client_cert", &["no listener asks for client certificates"]);
    assert_eq!(errors.len(), 1, "reported:\n{}", render(&errors));
}

#[test]
fn listener_tls_files_that_do_not_fit_fail_the_build_with_their_listener() {
    use seawall::dev_certs::{self, Usage, Validity};
    let dir = tempfile::tempdir().unwrap();
    let ca = dev_certs::ca("Listener CA").unwrap();
    let other_ca = dev_certs::ca("Other CA").unwrap();
    let server = dev_certs::leaf(&ca, "localhost", &["localhost"], Usage::Server, Validity::default()).unwrap();
    let stranger = dev_certs::leaf(&ca, "localhost", &["localhost"], Usage::Server, Validity::default()).unwrap();
    let (cert, key) = server.write(dir.path(), "server").unwrap();
    let (_, wrong_key) = stranger.write(dir.path(), "stranger").unwrap();
    let (ca_file, _) = ca.write(dir.path(), "ca").unwrap();
    let foreign_crl = write(dir.path(), "foreign.crl", "");
    std::fs::write(&foreign_crl, dev_certs::crl(&other_ca, &[], 7).unwrap().to_pem().unwrap()).unwrap();
    let stale_crl = write(dir.path(), "stale.crl", "");
    std::fs::write(&stale_crl, dev_certs::crl(&ca, &[], -1).unwrap().to_pem().unwrap()).unwrap();
    let listener = |i: usize, key: &Path, crl: &Path| {
        format!(
            "  - {{ name: l{i}, address: \"127.0.0.1:{}\", tls: {{ cert: {}, key: {}, client_auth: {{ mode: required, ca: [{}], crl: [{}] }} }} }}\n",
            8440 + i,
            cert.display(),
            key.display(),
            ca_file.display(),
            crl.display()
        )
    };
    let good_crl = write(dir.path(), "good.crl", "");
    std::fs::write(&good_crl, dev_certs::crl(&ca, &[], 7).unwrap().to_pem().unwrap()).unwrap();
    let yaml = format!(
        "listeners:\n{}{}{}{}admin: {{ address: 127.0.0.1:9090 }}\n",
        listener(0, &wrong_key, &good_crl),
        listener(1, &key, &foreign_crl),
        listener(2, &key, &stale_crl),
        listener(3, &key, &good_crl),
    );
    let file = write(dir.path(), "seawall.yaml", &yaml);
    let config = config::load_file(&file, &env_of(&[])).unwrap_or_else(|e| panic!("should parse:\n{}", render(&e)));
    let errors = match seawall::build(config) {
        Ok(_) => panic!("mismatched TLS files must not build"),
        Err(errors) => errors,
    };
    assert_error(&errors, "listeners[0].tls", &["is not the private key of the certificate"]);
    assert_error(&errors, "listeners[1].tls", &["not issued by any of the listener's client CAs"]);
    assert_error(&errors, "listeners[2].tls", &["expired", "nextUpdate"]);
    assert_eq!(errors.len(), 3, "reported:\n{}", render(&errors));
}

#[test]
fn protection_settings_are_checked_with_their_paths() {
    let errors = errors_of(
        r#"
listeners: [{ name: public, address: 127.0.0.1:8080 }]
admin: { address: 127.0.0.1:9090 }
upstreams:
  crm:
    targets: ["127.0.0.1:9"]
    circuit_breaker: { failure_ratio: 1.5, min_requests: 0, window_secs: 0, open_secs: 99999, probes: 0 }
routes:
  - id: a
    match: { path: "/a" }
    upstream: crm
    timeout_ms: 100
    rate_limit: { requests_per_sec: 0, burst: 0, key: client }
  - id: b
    match: { path: "/b" }
    upstream: crm
    timeout_ms: 100
    rate_limit: { requests_per_sec: 5, key: everyone }
    on_error: { status: 503, codes: [invalid_token], body: { gateway_status: x } }
"#,
    );
    for (path, fragment) in [
        ("upstreams.crm.circuit_breaker.failure_ratio", "above 0 and at most 1"),
        ("upstreams.crm.circuit_breaker.min_requests", "at least 1"),
        ("upstreams.crm.circuit_breaker.window_secs", "between 1 and 3600"),
        ("upstreams.crm.circuit_breaker.open_secs", "between 1 and 3600"),
        ("upstreams.crm.circuit_breaker.probes", "between 1 and 100"),
        ("routes[0].rate_limit.requests_per_sec", "one a day"),
        ("routes[0].rate_limit.burst", "1 to 1000000"),
        ("routes[0].rate_limit.key", "needs `auth.jwt`"),
        ("routes[1].rate_limit.key", "`everyone` is not one of route, client, ip"),
        ("routes[1].on_error.status", "200 to 299"),
        ("routes[1].on_error.codes[0]", "`invalid_token` is not one of"),
        ("routes[1].on_error.body.gateway_status", "added by the gateway"),
    ] {
        assert_error(&errors, path, &[fragment]);
    }
    assert_eq!(errors.len(), 12, "reported:\n{}", render(&errors));
}

#[test]
fn a_degraded_body_must_fit_a_data_action_output_contract() {
    let nested = |levels: usize| format!("{}1{}", "{l: ".repeat(levels), "}".repeat(levels));
    let config = |body: &str| {
        format!(
            r#"
listeners: [{{ name: public, address: 127.0.0.1:8080 }}]
admin: {{ address: 127.0.0.1:9090 }}
upstreams: {{ crm: {{ targets: [127.0.0.1:9] }} }}
routes:
  - {{ id: r, match: {{ path: /r }}, upstream: crm, timeout_ms: 1000, on_error: {{ body: {body} }} }}
"#
        )
    };
    // 50 levels, the body being the first: fine. Arrays of objects holding arrays: fine.
    let fits = format!("{{ deep: {}, rows: [{{ tags: [a, b] }}] }}", nested(48));
    assert!(load(&config(&fits)).is_ok(), "{}", render(&errors_of(&config(&fits))));

    let errors = errors_of(&config(&format!("{{ deep: {}, grid: [[1, 2]] }}", nested(49))));
    assert_error(&errors, "routes[0].on_error.body.deep", &["deeper than 50 levels"]);
    assert_error(&errors, "routes[0].on_error.body.grid", &["an array inside an array"]);
}
