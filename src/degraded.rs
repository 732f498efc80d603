//! Degraded answers (`on_error`): a contact-centre flow that cannot read error details gets,
//! for the backend-side failures a route lists, its declared status (200 by default) and body
//! plus `"gateway_status": "<code>"`, so it can branch on one field (see GENESYS.md). Bodies are
//! rendered once at start-up, one per code.

use bytes::Bytes;
use http::HeaderValue;
use pingora_http::ResponseHeader;

use crate::problem::Problem;

#[derive(Debug, Clone)]
pub struct DegradedAnswers {
    pub status: u16,
    /// (problem code, body with its `gateway_status`)
    bodies: Vec<(&'static str, Bytes)>,
}

impl DegradedAnswers {
    /// `body` is the route's JSON object; `codes` are among [`crate::problem::DEGRADABLE_CODES`]
    /// and the route's mediation's backend-side failures.
    pub fn new(status: u16, body: &serde_json::Map<String, serde_json::Value>, codes: &[&'static str]) -> Self {
        let bodies = codes
            .iter()
            .map(|code| {
                let mut object = body.clone();
                object.insert("gateway_status".into(), serde_json::Value::String((*code).into()));
                (*code, Bytes::from(serde_json::to_vec(&object).expect("a JSON object serializes")))
            })
            .collect();
        DegradedAnswers { status, bodies }
    }

    /// Whether the route declares a degraded answer for `code`.
    pub fn covers(&self, code: &str) -> bool {
        self.bodies.iter().any(|(c, _)| *c == code)
    }

    /// The degraded answer for `problem`, when the route declares one for its code.
    pub fn answer(&self, problem: &Problem, request_id: &HeaderValue) -> Option<(ResponseHeader, Bytes)> {
        let code = problem.code();
        let body = self.bodies.iter().find(|(c, _)| *c == code)?.1.clone();
        let mut header = crate::problem::answer_header(self.status, "application/json", body.len());
        header.insert_header("cache-control", "no-store").ok()?;
        header.insert_header("x-request-id", request_id.clone()).ok()?;
        Some((header, body))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listed_codes_get_the_body_with_gateway_status_others_none() {
        let body = serde_json::json!({"balance": "", "currency": ""});
        let answers = DegradedAnswers::new(200, body.as_object().unwrap(), &["upstream_timeout", "circuit_open"]);
        let id = HeaderValue::from_static("req-1");
        let (header, body) = answers.answer(&Problem::UpstreamTimeout, &id).unwrap();
        assert_eq!(header.status.as_u16(), 200);
        let value: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(value, serde_json::json!({"balance": "", "currency": "", "gateway_status": "upstream_timeout"}));
        assert!(answers.answer(&Problem::BackendOverloaded, &id).is_none());
        assert!(answers.answer(&Problem::RouteNotFound, &id).is_none());
    }
}
