//! `mediation.yaml` as written by users: serde types only, no policy (see `super::load`).

use std::collections::BTreeMap;

use serde::Deserialize;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MediationFile {
    #[serde(default)]
    pub inputs: BTreeMap<String, InputSection>,
    pub request: Option<RequestSection>,
    pub response: Option<ResponseSection>,
    #[serde(default)]
    pub faults: Vec<FaultSection>,
    #[serde(default)]
    pub limits: LimitsSection,
    pub sql: Option<SqlSection>,
    /// A Lua file in the folder with `before` / `after` hooks.
    pub script: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InputSection {
    pub from: String,
    #[serde(rename = "type")]
    pub ty: String,
    /// The name in the source when it differs from the input's (a header, say).
    pub name: Option<String>,
    pub pattern: Option<String>,
    #[serde(rename = "enum", default)]
    pub allowed: Vec<serde_json::Value>,
    pub min: Option<f64>,
    pub max: Option<f64>,
    pub max_length: Option<usize>,
    pub default: Option<serde_json::Value>,
    #[serde(default)]
    pub optional: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RequestSection {
    pub soap: SoapSection,
    pub template: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SoapSection {
    pub version: String,
    pub action: String,
    pub path: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResponseSection {
    #[serde(default)]
    pub namespaces: BTreeMap<String, String>,
    pub root: String,
    pub fields: BTreeMap<String, FieldSection>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FieldSection {
    pub select: String,
    #[serde(rename = "type")]
    pub ty: String,
    pub default: Option<serde_json::Value>,
    #[serde(default)]
    pub array: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FaultSection {
    pub code: String,
    pub status: u16,
    pub problem: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsSection {
    pub xml_max_bytes: Option<usize>,
    pub xml_max_depth: Option<usize>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SqlSection {
    pub database: String,
    pub query: String,
    #[serde(default)]
    pub params: Vec<String>,
    pub shape: Option<String>,
    pub max_rows: Option<usize>,
    /// Output columns declared with a type (numerics as `number` or `string`); others follow the column.
    #[serde(default)]
    pub columns: BTreeMap<String, String>,
}
