//! SQL mediations: one declared, parameterized statement on a configured database. Inputs are
//! bound as parameters, never spliced into the text; rows become one object (`shape: object`,
//! no row: 404 `not_found`) or `{"rows": [...]}` (`shape: array`, at most `max_rows`). Column
//! values keep their JSON type (exact decimals as strings) unless `columns` declares one; NULLs
//! are left out, never `null`.

use std::collections::BTreeMap;

use serde_json::{Map, Value};

use super::inputs::{InputType, Inputs};
use super::mapping::{typed, MAX_OUTPUT_BYTES};
use crate::database::{JsonRow, Param};
use crate::problem::Problem;

/// Rows an array answer holds by default, and at most.
pub const DEFAULT_MAX_ROWS: usize = 100;
pub const MAX_ROWS_LIMIT: usize = 10_000;
/// The key holding an array answer's rows.
pub const ROWS_KEY: &str = "rows";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    Object,
    Array,
}

#[derive(Debug)]
pub struct SqlMediation {
    /// The `databases` entry it runs on.
    pub database: String,
    pub statement: String,
    /// Input names, bound in order.
    pub params: Vec<String>,
    pub shape: Shape,
    pub max_rows: usize,
    /// Declared output types of columns.
    pub columns: BTreeMap<String, InputType>,
}

impl SqlMediation {
    /// The statement's parameters from the inputs; an absent optional input binds NULL.
    pub fn params(&self, inputs: &Inputs) -> Vec<Param> {
        self.params.iter().map(|name| inputs.get(name).map_or(Param::Null, Param::of)).collect()
    }

    /// Rows to fetch: one for an object answer.
    pub fn rows_to_fetch(&self) -> usize {
        match self.shape {
            Shape::Object => 1,
            Shape::Array => self.max_rows,
        }
    }

    /// The caller's JSON from the rows.
    pub fn answer(&self, rows: Vec<JsonRow>) -> Result<Value, Problem> {
        let mut objects = Vec::with_capacity(rows.len());
        for row in rows {
            objects.push(self.shape_row(row)?);
        }
        let value = match self.shape {
            Shape::Object => match objects.into_iter().next() {
                Some(object) => Value::Object(object),
                None => {
                    return Err(Problem::Mapped { status: 404, code: "not_found", reason: "no row".into() });
                }
            },
            Shape::Array => {
                let rows = objects.into_iter().map(Value::Object).collect();
                Value::Object(Map::from_iter([(ROWS_KEY.to_string(), Value::Array(rows))]))
            }
        };
        if serde_json::to_vec(&value).map_or(0, |v| v.len()) > MAX_OUTPUT_BYTES {
            return Err(Problem::UpstreamBadAnswer { reason: format!("the rows are over {MAX_OUTPUT_BYTES} bytes") });
        }
        Ok(value)
    }

    fn shape_row(&self, row: JsonRow) -> Result<Map<String, Value>, Problem> {
        let mut out = Map::new();
        for (column, value) in row {
            if value.is_null() {
                continue;
            }
            let value = match self.columns.get(&column) {
                None => value,
                Some(&ty) => {
                    let text: std::borrow::Cow<'_, str> = match &value {
                        Value::String(s) => s.into(),
                        other => other.to_string().into(),
                    };
                    typed(ty, &text).ok_or_else(|| Problem::UpstreamBadAnswer {
                        reason: format!("column `{column}` is not of type {}", ty.label()),
                    })?
                }
            };
            out.insert(column, value);
        }
        Ok(out)
    }
}

/// Whether `statement` is one statement (a `;` may only end it). Quotes are honoured so a
/// literal `';'` is not taken for a separator.
pub fn is_single_statement(statement: &str) -> bool {
    let mut quote: Option<char> = None;
    let mut ended = false;
    for c in statement.chars() {
        match quote {
            Some(q) if c == q => quote = None,
            Some(_) => {}
            None if ended && !c.is_whitespace() => return false,
            None if c == '\'' || c == '"' || c == '`' => quote = Some(c),
            None if c == ';' => ended = true,
            None => {}
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mediation(shape: Shape) -> SqlMediation {
        SqlMediation {
            database: "crm_db".into(),
            statement: "SELECT balance, currency FROM accounts WHERE id = $1".into(),
            params: vec!["accountId".into(), "since".into()],
            shape,
            max_rows: 10,
            columns: BTreeMap::from([("balance".to_string(), InputType::Number)]),
        }
    }

    fn row(pairs: &[(&str, Value)]) -> JsonRow {
        pairs.iter().map(|(k, v)| (k.to_string(), v.clone())).collect()
    }

    #[test]
    fn inputs_bind_in_order_and_absent_optionals_bind_null() {
        let inputs = Inputs::from([("accountId".to_string(), Value::from("A1"))]);
        assert_eq!(mediation(Shape::Object).params(&inputs), vec![Param::Text("A1".into()), Param::Null]);
    }

    #[test]
    fn rows_are_shaped_typed_and_nulls_left_out() {
        let rows = vec![row(&[("balance", "12.50".into()), ("currency", "EUR".into()), ("note", Value::Null)])];
        let object = mediation(Shape::Object).answer(rows.clone()).unwrap();
        assert_eq!(object, serde_json::json!({"balance": 12.5, "currency": "EUR"}));
        let array = mediation(Shape::Array).answer(vec![rows[0].clone(), rows[0].clone()]).unwrap();
        assert_eq!(array["rows"].as_array().unwrap().len(), 2);
        assert!(matches!(mediation(Shape::Object).answer(vec![]), Err(Problem::Mapped { status: 404, .. })));
        assert_eq!(mediation(Shape::Array).answer(vec![]).unwrap(), serde_json::json!({"rows": []}));
        let bad = vec![row(&[("balance", "n/a".into())])];
        assert!(matches!(mediation(Shape::Object).answer(bad), Err(Problem::UpstreamBadAnswer { .. })));
    }

    #[test]
    fn only_one_statement_is_accepted() {
        assert!(is_single_statement("SELECT 1"));
        assert!(is_single_statement("SELECT 1;  "));
        assert!(is_single_statement("SELECT ';' FROM t WHERE a = $1"));
        assert!(!is_single_statement("SELECT 1; DROP TABLE accounts"));
        assert!(!is_single_statement("SELECT 'a'; DELETE FROM t"));
    }
}
