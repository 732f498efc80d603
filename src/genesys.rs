//! Facts from the Genesys Cloud Platform API turned into Seawall inputs:
//! `seawall genesys ipranges` turns a saved `GET /api/v2/ipranges` answer into an allowlist file.

use serde::{Deserialize, Serialize};

use crate::auth::ip::parse_cidr;

/// The service whose outbound ranges data actions come from.
pub const DATA_ACTIONS: &str = "data-actions";

#[derive(Deserialize)]
struct IpRangesAnswer {
    entities: Vec<IpRangeEntity>,
}

#[derive(Deserialize)]
struct IpRangeEntity {
    cidr: String,
    service: Option<String>,
    region: Option<String>,
    direction: Option<String>,
}

/// The allowlist file format read by `ip_allowlists.*.files`.
#[derive(Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct AllowlistFile {
    pub source: String,
    pub region: String,
    pub service: String,
    pub cidrs: Vec<String>,
}

/// Keeps the entries for data actions in `region` whose direction is outbound or both. Errors
/// name what is wrong with the answer; an answer with no matching entry is an error too (an
/// empty allowlist would refuse every caller).
pub fn ipranges(answer: &str, region: &str) -> Result<AllowlistFile, String> {
    let answer: IpRangesAnswer = serde_json::from_str(answer)
        .map_err(|e| format!("not a Genesys `GET /api/v2/ipranges` answer (expected {{\"entities\": [...]}}): {e}"))?;
    let mut cidrs = Vec::new();
    for (i, entity) in answer.entities.iter().enumerate() {
        let wanted = entity.service.as_deref() == Some(DATA_ACTIONS)
            && entity.region.as_deref() == Some(region)
            && matches!(entity.direction.as_deref(), Some("outbound") | Some("both"));
        if wanted {
            let net = parse_cidr(&entity.cidr).map_err(|e| format!("entities[{i}].cidr: {e}"))?;
            let text = net.to_string();
            if !cidrs.contains(&text) {
                cidrs.push(text);
            }
        }
    }
    if cidrs.is_empty() {
        let regions: std::collections::BTreeSet<&str> = answer
            .entities
            .iter()
            .filter(|e| e.service.as_deref() == Some(DATA_ACTIONS))
            .filter_map(|e| e.region.as_deref())
            .collect();
        return Err(format!(
            "no outbound `{DATA_ACTIONS}` ranges for region `{region}` (regions in the answer: {})",
            if regions.is_empty() { "none".to_string() } else { regions.into_iter().collect::<Vec<_>>().join(", ") }
        ));
    }
    Ok(AllowlistFile { source: "genesys".into(), region: region.into(), service: DATA_ACTIONS.into(), cidrs })
}

#[cfg(test)]
mod tests {
    use super::*;

    const ANSWER: &str = r#"{"entities":[
        {"cidr":"52.1.0.0/16","service":"data-actions","region":"us-east-1","direction":"outbound"},
        {"cidr":"52.2.0.0/16","service":"data-actions","region":"us-east-1","direction":"both"},
        {"cidr":"52.3.0.0/16","service":"data-actions","region":"us-east-1","direction":"inbound"},
        {"cidr":"52.4.0.0/16","service":"data-actions","region":"eu-west-1","direction":"outbound"},
        {"cidr":"52.5.0.0/16","service":"web-calling","region":"us-east-1","direction":"outbound"},
        {"cidr":"52.1.0.0/16","service":"data-actions","region":"us-east-1","direction":"outbound"}
    ],"pageSize":25}"#;

    #[test]
    fn keeps_outbound_data_action_ranges_of_the_region() {
        let file = ipranges(ANSWER, "us-east-1").unwrap();
        assert_eq!(file.cidrs, vec!["52.1.0.0/16", "52.2.0.0/16"]);
        assert_eq!(file.source, "genesys");
        assert_eq!(file.service, "data-actions");
        assert_eq!(ipranges(ANSWER, "eu-west-1").unwrap().cidrs, vec!["52.4.0.0/16"]);
    }

    #[test]
    fn malformed_answers_are_clear_errors() {
        assert!(ipranges("[]", "us-east-1").unwrap_err().contains("not a Genesys"));
        assert!(ipranges("{\"entities\": 3}", "us-east-1").unwrap_err().contains("not a Genesys"));
        let bad = r#"{"entities":[{"cidr":"52.1/99","service":"data-actions","region":"r","direction":"both"}]}"#;
        assert!(ipranges(bad, "r").unwrap_err().contains("entities[0].cidr"));
        let err = ipranges(ANSWER, "ap-south-1").unwrap_err();
        assert!(err.contains("regions in the answer: eu-west-1, us-east-1"), "{err}");
    }
}
