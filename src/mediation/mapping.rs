//! The answer's shape, declared field by field: each output field names its selector, type and
//! default. `array: true` fields are arrays whether the backend sent one element or many; a
//! missing field without a default is left out, never `null` (Genesys applies its own defaults
//! only to missing fields). The result is flat JSON within Genesys' limits.

use serde_json::{Map, Value};

use super::inputs::InputType;
use super::xml::{Document, Name, NodeId, Selector};

/// The largest answer a data action reads (Genesys' limit).
pub const MAX_OUTPUT_BYTES: usize = 2 * 1024 * 1024;
/// The deepest JSON a data action's output contract may describe.
pub const MAX_OUTPUT_DEPTH: usize = 50;

/// Whether an answer fits what a data action can read: an object, nested at most
/// [`MAX_OUTPUT_DEPTH`] deep, no array directly inside an array, at most [`MAX_OUTPUT_BYTES`].
/// (Declared mappings fit by construction; a script's `after` may not.)
pub fn check_genesys_limits(value: &Value) -> Result<(), String> {
    fn walk(value: &Value, depth: usize, in_array: bool) -> Result<(), String> {
        if depth > MAX_OUTPUT_DEPTH {
            return Err(format!("nested deeper than {MAX_OUTPUT_DEPTH}"));
        }
        match value {
            Value::Array(_) if in_array => Err("an array inside an array (data actions cannot map it)".into()),
            Value::Array(items) => items.iter().try_for_each(|v| walk(v, depth + 1, true)),
            Value::Object(map) => map.values().try_for_each(|v| walk(v, depth + 1, false)),
            _ => Ok(()),
        }
    }
    if !value.is_object() {
        return Err("not a JSON object".into());
    }
    walk(value, 1, false)?;
    let size = serde_json::to_vec(value).map_or(0, |v| v.len());
    if size > MAX_OUTPUT_BYTES {
        return Err(format!("{size} bytes, over {MAX_OUTPUT_BYTES}"));
    }
    Ok(())
}

#[derive(Debug, Clone)]
pub struct Field {
    pub name: String,
    pub selector: Selector,
    pub ty: InputType,
    pub default: Option<Value>,
    pub array: bool,
}

/// `response`: where the answer's payload is (`root`) and the fields read from it.
#[derive(Debug, Clone)]
pub struct ResponseMapping {
    pub root: Vec<Name>,
    pub fields: Vec<Field>,
}

/// The typed value of a text from the answer; `None` when it is not of the type.
pub fn typed(ty: InputType, text: &str) -> Option<Value> {
    match (ty, text.trim()) {
        (InputType::Boolean, "1") => Some(Value::Bool(true)),
        (InputType::Boolean, "0") => Some(Value::Bool(false)),
        _ => ty.parse_text(text),
    }
}

impl ResponseMapping {
    /// The first element `root` names, or `None` when the answer has none.
    pub fn root_of(&self, document: &Document) -> Option<NodeId> {
        document.select_elements(Document::ROOT, &self.root).first().copied()
    }

    /// The output object. An error names the field whose value is not of its declared type.
    pub fn map(&self, document: &Document, root: NodeId) -> Result<Map<String, Value>, String> {
        let mut out = Map::new();
        for field in &self.fields {
            let values = document.select(root, &field.selector);
            // An empty element is no value (`<Tier/>` is as good as no `Tier` at all), but an
            // empty string is a string.
            let convert = |text: &str| -> Result<Option<Value>, String> {
                if text.is_empty() && field.ty != InputType::String {
                    return Ok(None);
                }
                typed(field.ty, text)
                    .map(Some)
                    .ok_or_else(|| format!("field `{}` is not {} in the answer", field.name, article(field.ty)))
            };
            if field.array {
                let mut items = Vec::with_capacity(values.len());
                for text in values {
                    items.extend(convert(text)?);
                }
                if items.is_empty() {
                    if let Some(default) = &field.default {
                        out.insert(field.name.clone(), default.clone());
                    } else {
                        out.insert(field.name.clone(), Value::Array(Vec::new()));
                    }
                } else {
                    out.insert(field.name.clone(), Value::Array(items));
                }
            } else {
                let value = match values.first() {
                    Some(text) => convert(text)?,
                    None => None,
                };
                if let Some(value) = value.or_else(|| field.default.clone()) {
                    out.insert(field.name.clone(), value);
                }
            }
        }
        Ok(out)
    }
}

fn article(ty: InputType) -> &'static str {
    match ty {
        InputType::String => "a string",
        InputType::Integer => "an integer",
        InputType::Number => "a number",
        InputType::Boolean => "a boolean",
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::mediation::xml::XmlLimits;

    fn mapping() -> ResponseMapping {
        let ns = BTreeMap::from([("c".to_string(), "urn:crm".to_string())]);
        let field = |name: &str, select: &str, ty, default: Option<Value>, array| Field {
            name: name.into(),
            selector: Selector::parse(select, &ns).unwrap(),
            ty,
            default,
            array,
        };
        ResponseMapping {
            root: Selector::parse("/c:R", &ns).unwrap().steps,
            fields: vec![
                field("name", "c:Name", InputType::String, None, false),
                field("tier", "c:Tier", InputType::Integer, Some(Value::from(0)), false),
                field("vip", "c:Vip", InputType::Boolean, None, false),
                field("accounts", "c:Accounts/c:Account/c:Number", InputType::String, None, true),
                field("email", "c:Email", InputType::String, None, false),
            ],
        }
    }

    fn map(xml: &str) -> Result<Value, String> {
        let limits = XmlLimits { max_bytes: 65536, max_depth: 32 };
        let doc = Document::parse(xml.as_bytes(), limits).unwrap();
        let mapping = mapping();
        let root = mapping.root_of(&doc).ok_or("no root")?;
        mapping.map(&doc, root).map(Value::Object)
    }

    #[test]
    fn arrays_stay_arrays_for_one_element_or_many() {
        let one = map(
            r#"<R xmlns="urn:crm"><Name>Ada</Name><Accounts><Account><Number>A1</Number></Account></Accounts></R>"#,
        );
        assert_eq!(one.unwrap(), serde_json::json!({"name": "Ada", "tier": 0, "accounts": ["A1"]}));
        let three = map(r#"<x:R xmlns:x="urn:crm"><x:Name>Ada</x:Name><x:Tier>3</x:Tier><x:Vip>1</x:Vip><x:Accounts>
               <x:Account><x:Number>A1</x:Number></x:Account><x:Account><x:Number>A2</x:Number></x:Account>
               <x:Account><x:Number>A3</x:Number></x:Account></x:Accounts></x:R>"#);
        assert_eq!(
            three.unwrap(),
            serde_json::json!({"name": "Ada", "tier": 3, "vip": true, "accounts": ["A1", "A2", "A3"]})
        );
    }

    #[test]
    fn answers_stay_within_what_a_data_action_reads() {
        assert!(check_genesys_limits(&serde_json::json!({"a": [1, 2], "b": {"c": [{"d": 1}]}})).is_ok());
        assert!(check_genesys_limits(&serde_json::json!({"a": [[1]]})).unwrap_err().contains("array inside"));
        assert!(check_genesys_limits(&serde_json::json!([1])).is_err());
        let mut deep = serde_json::json!(1);
        for _ in 0..60 {
            deep = serde_json::json!({ "x": deep });
        }
        assert!(check_genesys_limits(&deep).unwrap_err().contains("deeper"));
        let big = serde_json::json!({"x": "y".repeat(MAX_OUTPUT_BYTES)});
        assert!(check_genesys_limits(&big).unwrap_err().contains("bytes"));
    }

    #[test]
    fn missing_fields_are_omitted_and_wrong_types_named() {
        let none = map(r#"<R xmlns="urn:crm"><Tier/></R>"#).unwrap();
        assert_eq!(none, serde_json::json!({"tier": 0, "accounts": []}), "no nulls, empty Tier is missing");
        let wrong = map(r#"<R xmlns="urn:crm"><Tier>gold</Tier></R>"#).unwrap_err();
        assert_eq!(wrong, "field `tier` is not an integer in the answer");
    }
}
