//! SQL backends (`databases`): one sqlx pool per database (PostgreSQL, MySQL/MariaDB, SQLite),
//! made on first use. Statements are plain `query()` calls with bound parameters, never text
//! spliced together. Every statement is bounded twice: by the database (PostgreSQL's
//! `statement_timeout`, MariaDB's `max_statement_time`, MySQL's `max_execution_time`; SQLite has
//! none, so the gateway interrupts it through a progress handler) and by the gateway's own clock.

use std::str::FromStr;
use std::time::{Duration, Instant};

use futures_util::TryStreamExt;
use serde_json::{Map, Number, Value};
use sqlx::mysql::{MySqlConnectOptions, MySqlPool, MySqlPoolOptions, MySqlRow};
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions, PgRow};
use sqlx::sqlite::{SqliteConnectOptions, SqlitePool, SqlitePoolOptions, SqliteRow};
use sqlx::{Column, Executor, Row, TypeInfo, ValueRef};
use tokio::sync::OnceCell;

use crate::config::{DatabaseConfig, Driver};
use crate::problem::Problem;

/// Idle pooled connections close after this long.
const IDLE_TIMEOUT: Duration = Duration::from_secs(55);
/// SQLite's progress handler runs every this many virtual-machine steps.
const SQLITE_PROGRESS_STEPS: i32 = 1000;

/// A statement parameter, typed.
#[derive(Debug, Clone, PartialEq)]
pub enum Param {
    Text(String),
    Int(i64),
    Float(f64),
    Bool(bool),
    Null,
}

impl Param {
    pub fn of(value: &Value) -> Param {
        match value {
            Value::String(s) => Param::Text(s.clone()),
            Value::Bool(b) => Param::Bool(*b),
            Value::Number(n) => match n.as_i64() {
                Some(i) => Param::Int(i),
                None => Param::Float(n.as_f64().unwrap_or_default()),
            },
            Value::Null => Param::Null,
            other => Param::Text(other.to_string()),
        }
    }

    /// As a golden case states it.
    pub fn to_json(&self) -> Value {
        match self {
            Param::Text(s) => Value::String(s.clone()),
            Param::Int(i) => Value::from(*i),
            Param::Float(f) => Number::from_f64(*f).map_or(Value::Null, Value::Number),
            Param::Bool(b) => Value::Bool(*b),
            Param::Null => Value::Null,
        }
    }
}

/// A row as JSON: column name to value. Exact decimals (NUMERIC, DECIMAL) are strings; the
/// mediation converts declared columns.
pub type JsonRow = Map<String, Value>;

enum Pool {
    Postgres(PgPool),
    MySql(MySqlPool),
    Sqlite(SqlitePool),
}

pub struct Database {
    pub config: DatabaseConfig,
    pool: OnceCell<Pool>,
}

impl Database {
    pub fn new(config: DatabaseConfig) -> Database {
        Database { config, pool: OnceCell::new() }
    }

    /// The pool, made on first use (inside the gateway's runtime, where its tasks can run).
    async fn pool(&self) -> Result<&Pool, Problem> {
        self.pool.get_or_try_init(|| async { self.make_pool() }).await
    }

    fn make_pool(&self) -> Result<Pool, Problem> {
        let c = &self.config;
        let unusable = |e: sqlx::Error| Problem::UpstreamUnavailable { reason: format!("database `{}`: {e}", c.name) };
        Ok(match c.driver {
            Driver::Postgres => {
                let timeout_ms = c.statement_timeout.as_millis().to_string();
                let options = PgConnectOptions::from_str(&c.url)
                    .map_err(unusable)?
                    .options([("statement_timeout", timeout_ms.as_str())])
                    .application_name("seawall");
                let pool = PgPoolOptions::new()
                    .max_connections(c.max_connections)
                    .acquire_timeout(c.acquire_timeout)
                    .idle_timeout(IDLE_TIMEOUT)
                    .connect_lazy_with(options);
                Pool::Postgres(pool)
            }
            Driver::MySql => {
                let options = MySqlConnectOptions::from_str(&c.url).map_err(unusable)?;
                let timeout = c.statement_timeout;
                let pool = MySqlPoolOptions::new()
                    .max_connections(c.max_connections)
                    .acquire_timeout(c.acquire_timeout)
                    .idle_timeout(IDLE_TIMEOUT)
                    .after_connect(move |conn, _| {
                        Box::pin(async move {
                            // MariaDB counts seconds; MySQL counts milliseconds (SELECTs only).
                            let mariadb = format!("SET SESSION max_statement_time = {}", timeout.as_secs_f64());
                            if conn.execute(mariadb.as_str()).await.is_err() {
                                let mysql = format!("SET SESSION max_execution_time = {}", timeout.as_millis());
                                conn.execute(mysql.as_str()).await?;
                            }
                            Ok(())
                        })
                    })
                    .connect_lazy_with(options);
                Pool::MySql(pool)
            }
            Driver::Sqlite => {
                let options = SqliteConnectOptions::from_str(&c.url).map_err(unusable)?;
                let pool = SqlitePoolOptions::new()
                    .max_connections(c.max_connections)
                    .acquire_timeout(c.acquire_timeout)
                    .idle_timeout(IDLE_TIMEOUT)
                    .connect_lazy_with(options);
                Pool::Sqlite(pool)
            }
        })
    }

    /// Runs statements without parameters or rows (golden cases' seeds, the demo's database).
    pub async fn execute(&self, statements: &str) -> Result<(), String> {
        let result = match self.pool().await.map_err(|p| p.to_string())? {
            Pool::Postgres(pool) => sqlx::raw_sql(statements).execute(pool).await.map(|_| ()),
            Pool::MySql(pool) => sqlx::raw_sql(statements).execute(pool).await.map(|_| ()),
            Pool::Sqlite(pool) => sqlx::raw_sql(statements).execute(pool).await.map(|_| ()),
        };
        result.map_err(|e| e.to_string())
    }

    /// Runs the statement with `params` (bound as they are, not copied); at most `max_rows` rows
    /// are read. Bounded by the statement timeout and by `time_left`, whichever is first.
    pub async fn fetch(
        &self,
        statement: &str,
        params: Vec<Param>,
        max_rows: usize,
        time_left: Duration,
    ) -> Result<Vec<JsonRow>, Problem> {
        let pool = self.pool().await?;
        let budget = time_left.min(self.config.statement_timeout + self.config.acquire_timeout);
        let run = async {
            match pool {
                Pool::Postgres(pool) => fetch_rows(pool, statement, params, max_rows, pg_cell).await,
                Pool::MySql(pool) => fetch_rows(pool, statement, params, max_rows, mysql_cell).await,
                Pool::Sqlite(pool) => self.fetch_sqlite(pool, statement, params, max_rows).await,
            }
        };
        match tokio::time::timeout(budget, run).await {
            Ok(result) => result.map_err(|e| self.problem(pool, e)),
            Err(_) => Err(Problem::UpstreamTimeout),
        }
    }

    /// SQLite has no statement timeout of its own: the connection's progress handler interrupts
    /// the statement once its time is up.
    async fn fetch_sqlite(
        &self,
        pool: &SqlitePool,
        statement: &str,
        params: Vec<Param>,
        max_rows: usize,
    ) -> Result<Vec<JsonRow>, FetchError> {
        let mut conn = pool.acquire().await.map_err(FetchError::Sql)?;
        let deadline = Instant::now() + self.config.statement_timeout;
        conn.lock_handle()
            .await
            .map_err(FetchError::Sql)?
            .set_progress_handler(SQLITE_PROGRESS_STEPS, move || Instant::now() < deadline);
        let rows = fetch_rows(&mut *conn, statement, params, max_rows, sqlite_cell).await;
        if let Ok(mut handle) = conn.lock_handle().await {
            handle.remove_progress_handler();
        }
        rows
    }

    /// What a failed statement means for the caller.
    fn problem(&self, pool: &Pool, e: FetchError) -> Problem {
        let name = &self.config.name;
        match e {
            FetchError::Unmapped(reason) => {
                Problem::UpstreamBadAnswer { reason: format!("database `{name}`: {reason}") }
            }
            FetchError::Sql(sqlx::Error::PoolTimedOut) => {
                // Every connection busy: the pool is the bulkhead. Fewer connections than
                // allowed: they could not be made, the database is unreachable.
                let (size, idle) = match pool {
                    Pool::Postgres(p) => (p.size(), p.num_idle()),
                    Pool::MySql(p) => (p.size(), p.num_idle()),
                    Pool::Sqlite(p) => (p.size(), p.num_idle()),
                };
                if size >= self.config.max_connections && idle == 0 {
                    Problem::BackendOverloaded
                } else {
                    Problem::UpstreamUnavailable { reason: format!("database `{name}`: no connection could be made") }
                }
            }
            FetchError::Sql(sqlx::Error::Database(db)) if is_statement_timeout(db.as_ref()) => Problem::UpstreamTimeout,
            FetchError::Sql(e) => Problem::UpstreamUnavailable { reason: format!("database `{name}`: {e}") },
        }
    }
}

#[derive(Debug)]
enum FetchError {
    Sql(sqlx::Error),
    /// A column whose type has no JSON mapping.
    Unmapped(String),
}

/// The database cancelled the statement at its timeout: PostgreSQL 57014 (query_canceled),
/// MariaDB 1969 (max_statement_time), MySQL 3024 (max_execution_time), SQLite 9 (interrupted
/// by the gateway's progress handler).
fn is_statement_timeout(e: &dyn sqlx::error::DatabaseError) -> bool {
    if let Some(mysql) = e.try_downcast_ref::<sqlx::mysql::MySqlDatabaseError>() {
        return matches!(mysql.number(), 1969 | 3024);
    }
    matches!(e.code().as_deref(), Some("57014") | Some("9"))
}

async fn fetch_rows<'c, E, DB>(
    executor: E,
    statement: &str,
    params: Vec<Param>,
    max_rows: usize,
    cell: fn(&DB::Row, usize) -> Result<Value, String>,
) -> Result<Vec<JsonRow>, FetchError>
where
    DB: sqlx::Database,
    E: sqlx::Executor<'c, Database = DB>,
    for<'q> <DB as sqlx::Database>::Arguments<'q>: sqlx::IntoArguments<'q, DB>,
    for<'q> String: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    for<'q> i64: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    for<'q> f64: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    for<'q> bool: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    for<'q> Option<String>: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
{
    let mut query = sqlx::query::<DB>(statement);
    for param in params {
        query = match param {
            Param::Text(s) => query.bind(s),
            Param::Int(i) => query.bind(i),
            Param::Float(f) => query.bind(f),
            Param::Bool(b) => query.bind(b),
            Param::Null => query.bind(None::<String>),
        };
    }
    let mut stream = query.fetch(executor);
    let mut rows = Vec::new();
    while rows.len() < max_rows {
        let Some(row) = stream.try_next().await.map_err(FetchError::Sql)? else { break };
        let mut object = JsonRow::new();
        for (i, column) in row.columns().iter().enumerate() {
            let value = cell(&row, i).map_err(|e| FetchError::Unmapped(format!("column `{}`: {e}", column.name())))?;
            object.insert(column.name().to_string(), value);
        }
        rows.push(object);
    }
    Ok(rows)
}

fn float(f: Option<f64>) -> Value {
    f.and_then(Number::from_f64).map_or(Value::Null, Value::Number)
}

fn pg_cell(row: &PgRow, i: usize) -> Result<Value, String> {
    let e = |e: sqlx::Error| e.to_string();
    Ok(match row.column(i).type_info().name() {
        "INT2" => row.try_get::<Option<i16>, _>(i).map_err(e)?.map_or(Value::Null, Value::from),
        "INT4" => row.try_get::<Option<i32>, _>(i).map_err(e)?.map_or(Value::Null, Value::from),
        "INT8" => row.try_get::<Option<i64>, _>(i).map_err(e)?.map_or(Value::Null, Value::from),
        "FLOAT4" => float(row.try_get::<Option<f32>, _>(i).map_err(e)?.map(f64::from)),
        "FLOAT8" => float(row.try_get::<Option<f64>, _>(i).map_err(e)?),
        "NUMERIC" => {
            row.try_get::<Option<sqlx::types::Decimal>, _>(i).map_err(e)?.map_or(Value::Null, |d| d.to_string().into())
        }
        "BOOL" => row.try_get::<Option<bool>, _>(i).map_err(e)?.map_or(Value::Null, Value::Bool),
        "TEXT" | "VARCHAR" | "BPCHAR" | "NAME" | "CHAR" => {
            row.try_get::<Option<String>, _>(i).map_err(e)?.map_or(Value::Null, Value::String)
        }
        "DATE" => row
            .try_get::<Option<sqlx::types::chrono::NaiveDate>, _>(i)
            .map_err(e)?
            .map_or(Value::Null, |d| d.to_string().into()),
        "TIMESTAMP" => row
            .try_get::<Option<sqlx::types::chrono::NaiveDateTime>, _>(i)
            .map_err(e)?
            .map_or(Value::Null, |d| d.format("%Y-%m-%dT%H:%M:%S%.f").to_string().into()),
        "TIMESTAMPTZ" => row
            .try_get::<Option<sqlx::types::chrono::DateTime<sqlx::types::chrono::Utc>>, _>(i)
            .map_err(e)?
            .map_or(Value::Null, |d| d.to_rfc3339().into()),
        other => return Err(format!("type {other} has no JSON mapping (cast it in the statement, e.g. `::text`)")),
    })
}

fn mysql_cell(row: &MySqlRow, i: usize) -> Result<Value, String> {
    let e = |e: sqlx::Error| e.to_string();
    Ok(match row.column(i).type_info().name() {
        "BOOLEAN" => row.try_get::<Option<bool>, _>(i).map_err(e)?.map_or(Value::Null, Value::Bool),
        "TINYINT" | "SMALLINT" | "MEDIUMINT" | "INT" | "BIGINT" => {
            row.try_get::<Option<i64>, _>(i).map_err(e)?.map_or(Value::Null, Value::from)
        }
        "TINYINT UNSIGNED" | "SMALLINT UNSIGNED" | "MEDIUMINT UNSIGNED" | "INT UNSIGNED" | "BIGINT UNSIGNED" => {
            row.try_get::<Option<u64>, _>(i).map_err(e)?.map_or(Value::Null, Value::from)
        }
        "FLOAT" => float(row.try_get::<Option<f32>, _>(i).map_err(e)?.map(f64::from)),
        "DOUBLE" => float(row.try_get::<Option<f64>, _>(i).map_err(e)?),
        "DECIMAL" => {
            row.try_get::<Option<sqlx::types::Decimal>, _>(i).map_err(e)?.map_or(Value::Null, |d| d.to_string().into())
        }
        "VARCHAR" | "CHAR" | "TEXT" | "TINYTEXT" | "MEDIUMTEXT" | "LONGTEXT" | "ENUM" => {
            row.try_get::<Option<String>, _>(i).map_err(e)?.map_or(Value::Null, Value::String)
        }
        "DATE" => row
            .try_get::<Option<sqlx::types::chrono::NaiveDate>, _>(i)
            .map_err(e)?
            .map_or(Value::Null, |d| d.to_string().into()),
        "DATETIME" | "TIMESTAMP" => row
            .try_get::<Option<sqlx::types::chrono::NaiveDateTime>, _>(i)
            .map_err(e)?
            .map_or(Value::Null, |d| d.format("%Y-%m-%dT%H:%M:%S%.f").to_string().into()),
        other => return Err(format!("type {other} has no JSON mapping (cast it in the statement)")),
    })
}

fn sqlite_cell(row: &SqliteRow, i: usize) -> Result<Value, String> {
    // SQLite types values, not columns: the value's own storage class decides.
    let raw = row.try_get_raw(i).map_err(|e| e.to_string())?;
    if raw.is_null() {
        return Ok(Value::Null);
    }
    let type_info = raw.type_info();
    let e = |e: sqlx::Error| e.to_string();
    Ok(match type_info.name() {
        "INTEGER" | "INT8" => Value::from(row.try_get::<i64, _>(i).map_err(e)?),
        "BOOLEAN" => Value::Bool(row.try_get::<bool, _>(i).map_err(e)?),
        "REAL" => float(Some(row.try_get::<f64, _>(i).map_err(e)?)),
        "TEXT" | "DATE" | "DATETIME" | "TIME" => Value::String(row.try_get::<String, _>(i).map_err(e)?),
        "NUMERIC" => match row.try_get::<i64, _>(i) {
            Ok(n) => Value::from(n),
            Err(_) => float(Some(row.try_get::<f64, _>(i).map_err(e)?)),
        },
        other => return Err(format!("type {other} has no JSON mapping (cast it in the statement)")),
    })
}
