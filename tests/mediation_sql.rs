//! SQL mediations end to end on real databases: SQLite (embedded), PostgreSQL and MariaDB
//! (Debian's servers, started per test in a temporary directory). Inputs are bound, never
//! spliced; statements are cut off at their timeout (by the server, or by the gateway for
//! SQLite); a held pool answers 503 within its acquire timeout; a stopped database fails fast
//! and opens the circuit.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::databases::{MariaDb, Postgres};
use common::{problem_code, TestGateway, BASE};
use sqlx::Connection;

/// Writes mediation folders (name, mediation.yaml) under `dir`.
fn plugins(dir: &Path, mediations: &[(&str, String)]) {
    for (name, yaml) in mediations {
        std::fs::create_dir_all(dir.join(name)).unwrap();
        std::fs::write(dir.join(name).join("mediation.yaml"), yaml).unwrap();
    }
}

fn lookup(database: &str, query: &str, pattern: &str, shape: &str) -> String {
    format!(
        r#"
inputs:
  id: {{ from: path, type: string, pattern: "{pattern}" }}
sql:
  database: {database}
  query: "{query}"
  params: [id]
  shape: {shape}
  max_rows: 50
"#
    )
}

/// A gateway with `databases` (YAML) and one route per (id, path, mediation).
fn gateway(plugins_dir: &Path, databases: &str, routes: &[(&str, &str, &str)]) -> TestGateway {
    let mut yaml = format!("{BASE}\nplugins_dir: {}\ndatabases:\n{databases}\nroutes:\n", plugins_dir.display());
    for (id, path, mediation) in routes {
        yaml.push_str(&format!(
            "  - {{ id: {id}, match: {{ method: GET, path: \"{path}\" }}, mediation: {mediation}, timeout_ms: 3000 }}\n"
        ));
    }
    TestGateway::start(&yaml, &[])
}

async fn get(gw: &TestGateway, path: &str) -> (u16, String) {
    let response = reqwest::get(gw.url(path)).await.unwrap();
    (response.status().as_u16(), response.text().await.unwrap())
}

fn json(body: &str) -> serde_json::Value {
    serde_json::from_str(body).unwrap_or_else(|_| panic!("not JSON: {body}"))
}

const SEED: &str = "CREATE TABLE accounts (id VARCHAR(40) PRIMARY KEY, balance DECIMAL(12,2) NOT NULL, currency VARCHAR(3) NOT NULL, note VARCHAR(40));
INSERT INTO accounts VALUES ('ACC-1001', 1234.56, 'EUR', NULL), ('ACC-2002', 10.00, 'USD', 'vip'), ('ACC-3003', 0.10, 'GBP', NULL);";

async fn sqlite_file(dir: &Path) -> String {
    let file = dir.join("crm.db");
    let url = format!("sqlite://{}?mode=rwc", file.display());
    let mut conn = sqlx::SqliteConnection::connect(&url).await.unwrap();
    sqlx::raw_sql(SEED).execute(&mut conn).await.unwrap();
    conn.close().await.unwrap();
    format!("sqlite://{}", file.display())
}

/// The checks every driver must pass: an object, an array, a 404, and inputs bound as values
/// (with the pattern relaxed, SQL in a parameter matches nothing and changes nothing).
async fn lookups_bind_inputs_as_values(gw: &TestGateway) {
    let (status, body) = get(gw, "/accounts/ACC-1001").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(json(&body), serde_json::json!({"balance": 1234.56, "currency": "EUR"}), "NULL note left out");
    let (status, body) = get(gw, "/accounts/ACC-9999").await;
    assert_eq!((status, problem_code(&body).as_str()), (404, "not_found"));
    for hostile in ["1%20OR%201=1", "1;DROP%20TABLE%20accounts", "ACC-1001'%20OR%20'1'='1"] {
        let (status, body) = get(gw, &format!("/accounts/{hostile}")).await;
        assert_eq!((status, problem_code(&body).as_str()), (400, "invalid_input"), "{hostile}: by pattern");
        let (status, body) = get(gw, &format!("/relaxed/{hostile}")).await;
        assert_eq!(status, 200, "{hostile}: {body}");
        assert_eq!(json(&body), serde_json::json!({"rows": []}), "{hostile} bound as a value: no row matches");
    }
    let (status, body) = get(gw, "/count/x").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(json(&body)["rows"][0]["n"], 3, "the table is intact");
}

fn standard_plugins(dir: &Path, placeholder: &str) {
    plugins(
        dir,
        &[
            (
                "balance",
                lookup(
                    "db",
                    &format!("SELECT balance, currency, note FROM accounts WHERE id = {placeholder}"),
                    "[A-Z0-9-]{4,20}",
                    "object",
                ) + "  columns: { balance: number }\n",
            ),
            ("relaxed", lookup("db", &format!("SELECT id FROM accounts WHERE id = {placeholder}"), ".{1,60}", "array")),
            (
                "count",
                lookup(
                    "db",
                    &format!("SELECT count(*) AS n FROM accounts WHERE {placeholder} = {placeholder}"),
                    "x",
                    "array",
                ),
            ),
        ],
    );
}

const STANDARD_ROUTES: [(&str, &str, &str); 3] = [
    ("balance", "/accounts/{id}", "balance"),
    ("relaxed", "/relaxed/{id}", "relaxed"),
    ("count", "/count/{id}", "count"),
];

#[tokio::test]
async fn sqlite_lookups_bind_inputs_as_values() {
    let dir = tempfile::tempdir().unwrap();
    let url = sqlite_file(dir.path()).await;
    standard_plugins(dir.path(), "$1");
    let gw = gateway(dir.path(), &format!("  db: {{ url: \"{url}\" }}"), &STANDARD_ROUTES);
    lookups_bind_inputs_as_values(&gw).await;
    let metrics = gw.metrics().await;
    assert!(metrics.contains(r#"seawall_upstream_requests_total{outcome="ok",upstream="db"}"#), "{metrics}");
}

/// A statement that runs for minutes unless stopped.
const SQLITE_SPIN: &str = "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 5000000000) SELECT max(x) AS m FROM c WHERE $1 = $1";

#[tokio::test]
async fn sqlite_statements_are_interrupted_at_their_timeout_and_a_held_pool_answers_503() {
    let dir = tempfile::tempdir().unwrap();
    let url = sqlite_file(dir.path()).await;
    plugins(
        dir.path(),
        &[
            ("spin", lookup("db", SQLITE_SPIN, "x", "object")),
            ("balance", lookup("db", "SELECT balance FROM accounts WHERE id = $1", "[A-Z0-9-]{4,20}", "object")),
        ],
    );
    let databases =
        format!("  db: {{ url: \"{url}\", max_connections: 1, acquire_timeout_ms: 200, statement_timeout_ms: 700 }}");
    let gw =
        gateway(dir.path(), &databases, &[("spin", "/spin/{id}", "spin"), ("balance", "/accounts/{id}", "balance")]);

    let started = Instant::now();
    let (status, body) = get(&gw, "/spin/x").await;
    assert_eq!((status, problem_code(&body).as_str()), (504, "upstream_timeout"), "{body}");
    assert!(started.elapsed() < Duration::from_millis(1500), "interrupted at 700 ms: {:?}", started.elapsed());
    let (status, _) = get(&gw, "/accounts/ACC-1001").await;
    assert_eq!(status, 200, "the interrupted connection serves the next statement");

    // The only connection is busy with a long statement: the next call waits at most the
    // acquire timeout, then gets 503.
    let spin = tokio::spawn({
        let url = gw.url("/spin/x");
        async move { reqwest::get(url).await.unwrap().status().as_u16() }
    });
    // Waits until the long statement is in flight (the database's in-flight gauge), not a guess.
    let in_flight = Instant::now() + Duration::from_secs(5);
    while !gw.metrics().await.contains(r#"seawall_inflight_requests{upstream="db"} 1"#) {
        assert!(Instant::now() < in_flight, "the long statement never started");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let started = Instant::now();
    let (status, body) = get(&gw, "/accounts/ACC-1001").await;
    let waited = started.elapsed();
    assert_eq!((status, problem_code(&body).as_str()), (503, "backend_overloaded"), "{body}");
    assert!(waited >= Duration::from_millis(200) && waited < Duration::from_millis(600), "{waited:?}");
    assert_eq!(spin.await.unwrap(), 504);
}

#[tokio::test]
async fn postgres_lookups_timeouts_and_outages() {
    let mut pg = Postgres::start();
    let mut admin = sqlx::PgConnection::connect(&pg.url()).await.unwrap();
    sqlx::raw_sql(&SEED.replace("DECIMAL", "NUMERIC")).execute(&mut admin).await.unwrap();

    let dir = tempfile::tempdir().unwrap();
    standard_plugins(dir.path(), "$1");
    plugins(
        dir.path(),
        &[
            ("sleep", lookup("db", "SELECT pg_sleep(5)::text AS slept, $1::text AS x", "x", "object")),
            (
                "exact",
                lookup("db", "SELECT balance, currency FROM accounts WHERE id = $1", "[A-Z0-9-]{4,20}", "object"),
            ),
        ],
    );
    let databases = format!(
        "  db: {{ url: \"{}\", statement_timeout_ms: 300,\n        circuit_breaker: {{ failure_ratio: 0.5, min_requests: 3, window_secs: 30, open_secs: 30 }} }}",
        pg.url()
    );
    let mut routes = STANDARD_ROUTES.to_vec();
    routes.extend([("sleep", "/sleep/{id}", "sleep"), ("exact", "/exact/{id}", "exact")]);
    let gw = gateway(dir.path(), &databases, &routes);
    lookups_bind_inputs_as_values(&gw).await;
    let (_, body) = get(&gw, "/exact/ACC-3003").await;
    assert_eq!(json(&body), serde_json::json!({"balance": "0.10", "currency": "GBP"}), "NUMERIC stays exact");

    let started = Instant::now();
    let (status, body) = get(&gw, "/sleep/x").await;
    assert_eq!((status, problem_code(&body).as_str()), (504, "upstream_timeout"), "{body}");
    assert!(started.elapsed() < Duration::from_millis(1500));
    let active: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM pg_stat_activity WHERE state = 'active' AND query LIKE '%pg_sleep%' AND pid <> pg_backend_pid()",
    )
    .fetch_one(&mut admin)
    .await
    .unwrap();
    assert_eq!(active, 0, "the statement was cancelled by the server, not left running");
    drop(admin);

    pg.stop();
    // Every call fails fast until the failures outweigh the earlier successes in the window;
    // then the circuit opens and the database is left alone.
    let mut failures = 0;
    loop {
        let started = Instant::now();
        let (status, body) = get(&gw, "/accounts/ACC-1001").await;
        if status == 503 {
            assert_eq!(problem_code(&body), "circuit_open");
            break;
        }
        assert_eq!((status, problem_code(&body).as_str()), (502, "upstream_unavailable"), "{body}");
        assert!(started.elapsed() < Duration::from_millis(1000), "fails fast: {:?}", started.elapsed());
        failures += 1;
        assert!(failures <= 30, "the circuit never opened");
    }
    assert!(failures >= 3, "opened after {failures} failures");
}

#[tokio::test]
async fn mariadb_lookups_and_timeouts() {
    let maria = MariaDb::start();
    let mut admin = sqlx::MySqlConnection::connect(&maria.url()).await.unwrap();
    sqlx::raw_sql(SEED).execute(&mut admin).await.unwrap();

    let dir = tempfile::tempdir().unwrap();
    standard_plugins(dir.path(), "?");
    // MySQL's placeholders are positional: the count mediation binds its input twice.
    plugins(
        dir.path(),
        &[
            ("count", lookup("db", "SELECT count(*) AS n FROM accounts WHERE ? IS NOT NULL", "x", "array")),
            ("sleep", lookup("db", "SELECT SLEEP(5) AS slept, ? AS x FROM accounts", "x", "array")),
        ],
    );
    let databases = format!("  db: {{ url: \"{}\", statement_timeout_ms: 300 }}", maria.url());
    let mut routes = STANDARD_ROUTES.to_vec();
    routes.push(("sleep", "/sleep/{id}", "sleep"));
    let gw = gateway(dir.path(), &databases, &routes);
    lookups_bind_inputs_as_values(&gw).await;

    let started = Instant::now();
    let (status, body) = get(&gw, "/sleep/x").await;
    assert_eq!((status, problem_code(&body).as_str()), (504, "upstream_timeout"), "{body}");
    assert!(started.elapsed() < Duration::from_millis(1500), "{:?}", started.elapsed());
}
