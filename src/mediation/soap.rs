//! SOAP 1.1 and 1.2: the envelope built from the mediation's template (every value XML-escaped,
//! template work bounded by minijinja's fuel), and the answer read back: a Fault mapped through
//! `faults`, anything else mapped field by field (`super::mapping`).

use std::collections::BTreeMap;

use bytes::Bytes;
use http::HeaderValue;
use minijinja::{AutoEscape, Environment, UndefinedBehavior};
use regex::Regex;
use serde_json::Value;

use super::inputs::Inputs;
use super::mapping::{ResponseMapping, MAX_OUTPUT_BYTES};
use super::xml::{Document, Name, NodeId, XmlLimits};
use crate::problem::Problem;

pub const SOAP11_ENVELOPE: &str = "http://schemas.xmlsoap.org/soap/envelope/";
pub const SOAP12_ENVELOPE: &str = "http://www.w3.org/2003/05/soap-envelope";

/// Template instructions one envelope may take: plenty for any envelope, and a loop gone wrong
/// stops here instead of holding a worker.
const TEMPLATE_FUEL: u64 = 50_000;
/// The largest envelope a template may produce.
const MAX_ENVELOPE_BYTES: usize = 1024 * 1024;
const TEMPLATE: &str = "request";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SoapVersion {
    V11,
    V12,
}

impl SoapVersion {
    pub fn parse(text: &str) -> Option<SoapVersion> {
        match text {
            "1.1" => Some(SoapVersion::V11),
            "1.2" => Some(SoapVersion::V12),
            _ => None,
        }
    }

    pub fn envelope_namespace(self) -> &'static str {
        match self {
            SoapVersion::V11 => SOAP11_ENVELOPE,
            SoapVersion::V12 => SOAP12_ENVELOPE,
        }
    }
}

/// One `faults` entry: a glob on the fault code's local names.
#[derive(Debug, Clone)]
pub struct FaultRule {
    pub code: Regex,
    pub status: u16,
    pub problem: &'static str,
}

/// A fault no rule maps.
pub const DEFAULT_FAULT: (u16, &str) = (502, "upstream_fault");

impl FaultRule {
    /// `glob`: `*` matches any run of characters; everything else is literal.
    pub fn new(glob: &str, status: u16, problem: &'static str) -> Result<FaultRule, String> {
        let pattern = format!("^{}$", regex::escape(glob).replace(r"\*", ".*"));
        let code = Regex::new(&pattern).map_err(|e| e.to_string())?;
        Ok(FaultRule { code, status, problem })
    }
}

pub struct SoapMediation {
    pub version: SoapVersion,
    pub action: String,
    pub path: String,
    /// The request's `Content-Type`, with the action in it for SOAP 1.2; made once.
    pub content_type: HeaderValue,
    /// The `SOAPAction` header (SOAP 1.1 only); made once.
    pub soap_action: Option<HeaderValue>,
    templates: Environment<'static>,
    pub response: ResponseMapping,
    pub faults: Vec<FaultRule>,
    pub limits: XmlLimits,
}

impl std::fmt::Debug for SoapMediation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SoapMediation").field("version", &self.version).field("action", &self.action).finish()
    }
}

/// The template environment: escaping forced on for every value (`safe` is gone, so no value
/// can opt out), undefined names are errors, work is bounded.
fn environment(source: String) -> Result<Environment<'static>, String> {
    let mut env = Environment::new();
    env.set_auto_escape_callback(|_| AutoEscape::Html);
    env.remove_filter("safe");
    env.set_undefined_behavior(UndefinedBehavior::Strict);
    env.set_fuel(Some(TEMPLATE_FUEL));
    env.add_template_owned(TEMPLATE, source).map_err(|e| template_error(&e))?;
    Ok(env)
}

fn template_error(e: &minijinja::Error) -> String {
    match e.line() {
        Some(line) => format!("{} (template line {line})", e.kind()),
        None => e.to_string(),
    }
}

impl SoapMediation {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        version: SoapVersion,
        action: String,
        path: String,
        template: String,
        response: ResponseMapping,
        faults: Vec<FaultRule>,
        limits: XmlLimits,
    ) -> Result<SoapMediation, String> {
        let templates = environment(template)?;
        let header =
            |text: String| HeaderValue::try_from(text).map_err(|_| "the action cannot be sent in a header".to_string());
        let (content_type, soap_action) = match version {
            SoapVersion::V11 => {
                (HeaderValue::from_static("text/xml; charset=utf-8"), Some(header(format!("\"{action}\""))?))
            }
            SoapVersion::V12 => (header(format!("application/soap+xml; charset=utf-8; action=\"{action}\""))?, None),
        };
        Ok(SoapMediation { version, action, path, content_type, soap_action, templates, response, faults, limits })
    }

    /// Renders the envelope for `inputs`.
    pub fn render(&self, inputs: &Inputs) -> Result<String, String> {
        let context: BTreeMap<&str, minijinja::Value> =
            inputs.iter().map(|(k, v)| (k.as_str(), template_value(v))).collect();
        let template = self.templates.get_template(TEMPLATE).map_err(|e| e.to_string())?;
        let rendered = template.render(context).map_err(|e| template_error(&e))?;
        if rendered.len() > MAX_ENVELOPE_BYTES {
            return Err(format!("the envelope is over {MAX_ENVELOPE_BYTES} bytes"));
        }
        Ok(rendered)
    }

    /// Checks at start-up that the template renders a well-formed envelope of the declared version.
    pub fn check_template(&self, sample: &Inputs) -> Result<(), String> {
        let rendered = self.render(sample)?;
        let limits = XmlLimits { max_bytes: MAX_ENVELOPE_BYTES, max_depth: 64 };
        let document = Document::parse(rendered.as_bytes(), limits)
            .map_err(|e| format!("the template does not render well-formed XML: {e}"))?;
        let root = document.first_child(Document::ROOT).and_then(|n| document.name(n));
        let expected = Name { namespace: Some(self.version.envelope_namespace().into()), local: "Envelope".into() };
        if root != Some(&expected) {
            return Err(format!(
                "the template's root element is not a SOAP {} Envelope (namespace {})",
                if self.version == SoapVersion::V11 { "1.1" } else { "1.2" },
                self.version.envelope_namespace()
            ));
        }
        Ok(())
    }

    /// The envelope the backend gets for `inputs`.
    pub fn envelope(&self, inputs: &Inputs) -> Result<Bytes, Problem> {
        self.render(inputs).map(Bytes::from).map_err(|reason| Problem::Internal { reason })
    }

    /// The caller's JSON from the backend's answer: a mapped Fault, a refusal of an answer that
    /// is not what was declared, or the mapped fields.
    pub fn answer(&self, status: u16, body: &[u8]) -> Result<Value, Problem> {
        let bad = |reason: String| Problem::UpstreamBadAnswer { reason };
        let document = match Document::parse(body, self.limits) {
            Ok(document) => document,
            Err(e) if (200..300).contains(&status) => return Err(bad(e.to_string())),
            Err(_) => return Err(Problem::UpstreamUnavailable { reason: format!("backend answered {status}") }),
        };
        if let Some(fault) = fault_codes(&document) {
            let codes: Vec<&str> = fault.codes.iter().map(String::as_str).collect();
            let (status, code) = self
                .faults
                .iter()
                .find(|rule| codes.iter().any(|c| rule.code.is_match(c)))
                .map_or(DEFAULT_FAULT, |rule| (rule.status, rule.problem));
            let reason = format!("SOAP fault {}: {}", codes.join("/"), fault.reason);
            return Err(Problem::Mapped { status, code, reason });
        }
        if !(200..300).contains(&status) {
            return Err(Problem::UpstreamUnavailable { reason: format!("backend answered {status} without a Fault") });
        }
        let root = self
            .response
            .root_of(&document)
            .ok_or_else(|| bad("the answer has no element at the mapping's root".into()))?;
        let object = self.response.map(&document, root).map_err(bad)?;
        let value = Value::Object(object);
        if serde_json::to_vec(&value).map_or(0, |v| v.len()) > MAX_OUTPUT_BYTES {
            return Err(bad(format!("the mapped answer is over {MAX_OUTPUT_BYTES} bytes")));
        }
        Ok(value)
    }
}

fn template_value(value: &Value) -> minijinja::Value {
    match value {
        Value::String(s) => minijinja::Value::from(s.as_str()),
        Value::Bool(b) => minijinja::Value::from(*b),
        Value::Number(n) => match n.as_i64() {
            Some(i) => minijinja::Value::from(i),
            None => minijinja::Value::from(n.as_f64().unwrap_or_default()),
        },
        Value::Null => minijinja::Value::from(()),
        other => minijinja::Value::from(other.to_string()),
    }
}

/// A Fault's codes (local names: the code, then its subcodes) and reason, for either version.
struct Fault {
    codes: Vec<String>,
    reason: String,
}

fn fault_codes(document: &Document) -> Option<Fault> {
    let envelope = document.first_child(Document::ROOT)?;
    let ns = document.name(envelope)?.namespace.clone()?;
    if ns != SOAP11_ENVELOPE && ns != SOAP12_ENVELOPE {
        return None;
    }
    let qualified = |local: &str| Name { namespace: Some(ns.clone()), local: local.into() };
    let body = document.children(envelope, &qualified("Body")).next()?;
    let fault = document.children(body, &qualified("Fault")).next()?;
    let local = |text: &str| text.trim().rsplit(':').next().unwrap_or_default().to_string();
    let first_text = |node: NodeId, steps: &[Name]| -> Option<String> {
        document.select_elements(node, steps).first().map(|&n| document.text(n).trim().to_string())
    };
    let reason_limit = |s: String| s.chars().take(200).collect::<String>();
    if ns == SOAP11_ENVELOPE {
        let unqualified = |l: &str| Name { namespace: None, local: l.into() };
        let code = first_text(fault, &[unqualified("faultcode")]).unwrap_or_default();
        let reason = first_text(fault, &[unqualified("faultstring")]).unwrap_or_default();
        Some(Fault { codes: vec![local(&code)], reason: reason_limit(reason) })
    } else {
        let mut codes = Vec::new();
        let mut code = document.children(fault, &qualified("Code")).next();
        while let Some(node) = code {
            if let Some(value) = first_text(node, &[qualified("Value")]) {
                codes.push(local(&value));
            }
            code = document.children(node, &qualified("Subcode")).next();
        }
        let reason = first_text(fault, &[qualified("Reason"), qualified("Text")]).unwrap_or_default();
        Some(Fault { codes, reason: reason_limit(reason) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mediation::inputs::InputType;
    use crate::mediation::mapping::Field;
    use crate::mediation::xml::Selector;

    const TEMPLATE_11: &str = r#"<s:Envelope xmlns:s="http://schemas.xmlsoap.org/soap/envelope/"><s:Body><GetCustomer xmlns="urn:crm"><Id>{{ id }}</Id></GetCustomer></s:Body></s:Envelope>"#;

    fn mediation(version: SoapVersion, template: &str) -> SoapMediation {
        let ns = BTreeMap::from([
            ("s".to_string(), version.envelope_namespace().to_string()),
            ("c".to_string(), "urn:crm".to_string()),
        ]);
        let response = ResponseMapping {
            root: Selector::parse("/s:Envelope/s:Body/c:GetCustomerResponse", &ns).unwrap().steps,
            fields: vec![Field {
                name: "name".into(),
                selector: Selector::parse("c:Name", &ns).unwrap(),
                ty: InputType::String,
                default: None,
                array: false,
            }],
        };
        let faults = vec![
            FaultRule::new("*Client*", 404, "not_found").unwrap(),
            FaultRule::new("Sender", 400, "bad_customer").unwrap(),
        ];
        let limits = XmlLimits { max_bytes: 4096, max_depth: 16 };
        SoapMediation::new(
            version,
            "urn:crm/GetCustomer".into(),
            "/svc".into(),
            template.into(),
            response,
            faults,
            limits,
        )
        .unwrap()
    }

    fn inputs(id: &str) -> Inputs {
        Inputs::from([("id".to_string(), Value::from(id))])
    }

    #[test]
    fn every_value_is_escaped_and_the_envelope_stays_well_formed() {
        let soap = mediation(SoapVersion::V11, TEMPLATE_11);
        let envelope = soap.envelope(&inputs(r#"<&"'>"#)).unwrap();
        let body = std::str::from_utf8(&envelope).unwrap();
        assert!(body.contains("<Id>&lt;&amp;&quot;&#x27;&gt;</Id>"), "{body}");
        let doc = Document::parse(body.as_bytes(), XmlLimits { max_bytes: 4096, max_depth: 16 }).unwrap();
        let ns = BTreeMap::from([("s".into(), SOAP11_ENVELOPE.into()), ("c".into(), "urn:crm".into())]);
        let id = Selector::parse("s:Envelope/s:Body/c:GetCustomer/c:Id", &ns).unwrap();
        assert_eq!(doc.select(Document::ROOT, &id), vec![r#"<&"'>"#]);
        assert_eq!(soap.soap_action.as_ref().map(|v| v.to_str().unwrap()), Some("\"urn:crm/GetCustomer\""));
        assert_eq!(soap.content_type, "text/xml; charset=utf-8");

        let unsafe_template = TEMPLATE_11.replace("{{ id }}", "{{ id|safe }}");
        let escaped = SoapMediation::new(
            SoapVersion::V11,
            "a".into(),
            "/".into(),
            unsafe_template,
            soap.response.clone(),
            vec![],
            soap.limits,
        );
        assert!(escaped.is_err() || escaped.unwrap().render(&inputs("<x>")).is_err(), "no `safe` filter");
    }

    #[test]
    fn soap12_carries_the_action_in_the_content_type() {
        let template = TEMPLATE_11.replace(SOAP11_ENVELOPE, SOAP12_ENVELOPE);
        let soap = mediation(SoapVersion::V12, &template);
        assert_eq!(soap.content_type, r#"application/soap+xml; charset=utf-8; action="urn:crm/GetCustomer""#);
        assert_eq!(soap.soap_action, None);
        soap.check_template(&inputs("1")).unwrap();
        let wrong = mediation(SoapVersion::V12, TEMPLATE_11);
        assert!(wrong.check_template(&inputs("1")).unwrap_err().contains("not a SOAP 1.2 Envelope"));
    }

    #[test]
    fn template_work_is_bounded() {
        let looping = TEMPLATE_11.replace("{{ id }}", "{% for i in range(100000) %}{{ id }}{% endfor %}");
        let soap = mediation(SoapVersion::V11, &looping);
        assert!(soap.render(&inputs("x")).is_err());
    }

    #[test]
    fn faults_of_both_versions_map_as_configured() {
        let soap11 = mediation(SoapVersion::V11, TEMPLATE_11);
        let fault11 = r#"<soap:Envelope xmlns:soap="http://schemas.xmlsoap.org/soap/envelope/"><soap:Body><soap:Fault>
            <faultcode>soap:Client.NotFound</faultcode><faultstring>no such customer</faultstring></soap:Fault></soap:Body></soap:Envelope>"#;
        match soap11.answer(500, fault11.as_bytes()).unwrap_err() {
            Problem::Mapped { status, code, reason } => {
                assert_eq!((status, code), (404, "not_found"));
                assert!(reason.contains("no such customer"));
            }
            other => panic!("{other:?}"),
        }
        let server11 = fault11.replace("soap:Client.NotFound", "soap:Server");
        assert!(matches!(
            soap11.answer(500, server11.as_bytes()),
            Err(Problem::Mapped { status: 502, code: "upstream_fault", .. })
        ));

        let soap12 = mediation(SoapVersion::V12, &TEMPLATE_11.replace(SOAP11_ENVELOPE, SOAP12_ENVELOPE));
        let fault12 = r#"<env:Envelope xmlns:env="http://www.w3.org/2003/05/soap-envelope"><env:Body><env:Fault>
            <env:Code><env:Value>env:Sender</env:Value><env:Subcode><env:Value>m:Bad</env:Value></env:Subcode></env:Code>
            <env:Reason><env:Text xml:lang="en">bad id</env:Text></env:Reason></env:Fault></env:Body></env:Envelope>"#;
        assert!(matches!(
            soap12.answer(400, fault12.as_bytes()),
            Err(Problem::Mapped { status: 400, code: "bad_customer", .. })
        ));
    }

    #[test]
    fn answers_that_are_not_as_declared_are_bad_answers() {
        let soap = mediation(SoapVersion::V11, TEMPLATE_11);
        let ok = r#"<s:Envelope xmlns:s="http://schemas.xmlsoap.org/soap/envelope/"><s:Body><GetCustomerResponse xmlns="urn:crm"><Name>Ada</Name></GetCustomerResponse></s:Body></s:Envelope>"#;
        assert_eq!(soap.answer(200, ok.as_bytes()).unwrap(), serde_json::json!({"name": "Ada"}));
        for bad in ["<s:Envelope", "<a/>", &"<a>".repeat(20), &format!("<a>{}</a>", "x".repeat(5000))] {
            assert!(matches!(soap.answer(200, bad.as_bytes()), Err(Problem::UpstreamBadAnswer { .. })), "{bad}");
        }
        assert!(matches!(soap.answer(503, b"<html>down</html>"), Err(Problem::UpstreamUnavailable { .. })));
    }
}
