//! A backend's XML answer, read once with quick-xml's namespace-aware reader into a small tree,
//! under hard limits: at most `max_bytes` of input and `max_depth` levels, and no DOCTYPE at all
//! (so no entity declarations: billion laughs and XXE are refused, not expanded). Names are kept
//! as (namespace URI, local name): a selector matches by URI, whatever prefix the backend chose.

use std::collections::BTreeMap;

use quick_xml::events::Event;
use quick_xml::name::ResolveResult;
use quick_xml::NsReader;

/// Limits on an answer (`limits` in `mediation.yaml`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct XmlLimits {
    pub max_bytes: usize,
    pub max_depth: usize,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum XmlError {
    #[error("answer of {size} bytes is over the {limit}-byte limit")]
    TooLarge { size: usize, limit: usize },
    #[error("answer nests deeper than {limit} elements")]
    TooDeep { limit: usize },
    #[error("answer has a DOCTYPE (entity declarations are never expanded)")]
    Doctype,
    #[error("answer refers to the undeclared entity `&{0};`")]
    UnknownEntity(String),
    #[error("answer is not well-formed XML: {0}")]
    Malformed(String),
}

/// An element or attribute name: namespace URI (none for unqualified names) and local name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Name {
    pub namespace: Option<String>,
    pub local: String,
}

/// Index of an element in a [`Document`]; [`Document::ROOT`] is the document itself.
pub type NodeId = usize;

#[derive(Debug, Default)]
struct Node {
    name: Option<Name>,
    attributes: Vec<(Name, String)>,
    /// The element's own text (text, CDATA and character references directly inside it).
    text: String,
    children: Vec<NodeId>,
}

/// A parsed answer.
#[derive(Debug)]
pub struct Document {
    nodes: Vec<Node>,
}

/// A path to elements, and optionally an attribute of theirs, as written in `mediation.yaml`:
/// prefixed names joined by `/` (`c:Customer/c:Name`, `c:Account/@id`), prefixes resolved
/// through the mediation's `namespaces`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Selector {
    pub steps: Vec<Name>,
    pub attribute: Option<Name>,
}

impl Selector {
    /// Parses a selector; an unknown prefix or an empty step is an error (for the config).
    pub fn parse(text: &str, namespaces: &BTreeMap<String, String>) -> Result<Selector, String> {
        let trimmed = text.strip_prefix('/').unwrap_or(text);
        if trimmed.is_empty() {
            return Err("empty selector".into());
        }
        let name = |part: &str| -> Result<Name, String> {
            let (prefix, local) = match part.split_once(':') {
                Some((p, l)) => (Some(p), l),
                None => (None, part),
            };
            let valid =
                |s: &str| !s.is_empty() && s.chars().all(|c| c.is_alphanumeric() || matches!(c, '_' | '-' | '.'));
            if !valid(local) || prefix.is_some_and(|p| !valid(p)) {
                return Err(format!("`{part}` is not a name (prefix:local or local)"));
            }
            let namespace = match prefix {
                None => None,
                Some(p) => Some(
                    namespaces
                        .get(p)
                        .cloned()
                        .ok_or_else(|| format!("prefix `{p}` is not declared in `namespaces`"))?,
                ),
            };
            Ok(Name { namespace, local: local.to_string() })
        };
        let mut steps = Vec::new();
        let mut attribute = None;
        let parts: Vec<&str> = trimmed.split('/').collect();
        for (i, part) in parts.iter().enumerate() {
            if let Some(attr) = part.strip_prefix('@') {
                if i + 1 != parts.len() {
                    return Err(format!("`{part}`: an attribute can only be the last step"));
                }
                attribute = Some(name(attr)?);
            } else {
                steps.push(name(part)?);
            }
        }
        Ok(Selector { steps, attribute })
    }
}

impl Document {
    pub const ROOT: NodeId = 0;

    /// Parses `input` under `limits`.
    pub fn parse(input: &[u8], limits: XmlLimits) -> Result<Document, XmlError> {
        if input.len() > limits.max_bytes {
            return Err(XmlError::TooLarge { size: input.len(), limit: limits.max_bytes });
        }
        let malformed = |e: &dyn std::fmt::Display| XmlError::Malformed(e.to_string());
        let mut reader = NsReader::from_reader(input);
        reader.config_mut().check_end_names = true;
        let mut nodes = vec![Node::default()];
        let mut open: Vec<NodeId> = vec![Self::ROOT];
        let mut seen_root_element = false;
        loop {
            let (resolved, event) = reader.read_resolved_event().map_err(|e| malformed(&e))?;
            let namespace = namespace_of(resolved)?;
            let current = *open.last().expect("the document node is never closed");
            match event {
                Event::Start(ref e) | Event::Empty(ref e) => {
                    if open.len() == 1 {
                        if seen_root_element {
                            return Err(XmlError::Malformed("more than one root element".into()));
                        }
                        seen_root_element = true;
                    }
                    if open.len() > limits.max_depth {
                        return Err(XmlError::TooDeep { limit: limits.max_depth });
                    }
                    let local = String::from_utf8_lossy(e.local_name().as_ref()).into_owned();
                    let mut attributes = Vec::new();
                    for attribute in e.attributes() {
                        let attribute = attribute.map_err(|e| malformed(&e))?;
                        let key = attribute.key;
                        if key.as_ref() == b"xmlns" || key.as_ref().starts_with(b"xmlns:") {
                            continue;
                        }
                        let (ns, local) = reader.resolver().resolve_attribute(key);
                        let namespace = namespace_of(ns)?;
                        let value = attribute
                            .normalized_value(quick_xml::XmlVersion::Implicit1_0)
                            .map_err(|e| entity_error(&e.to_string()))?;
                        let local = String::from_utf8_lossy(local.as_ref()).into_owned();
                        attributes.push((Name { namespace, local }, value.into_owned()));
                    }
                    let id = nodes.len();
                    nodes.push(Node { name: Some(Name { namespace, local }), attributes, ..Node::default() });
                    nodes[current].children.push(id);
                    if matches!(event, Event::Start(_)) {
                        open.push(id);
                    }
                }
                Event::End(_) => {
                    open.pop();
                }
                Event::Text(t) => {
                    let text = t.decode().map_err(|e| malformed(&e))?;
                    if open.len() == 1 {
                        if !text.trim().is_empty() {
                            return Err(XmlError::Malformed("text outside the root element".into()));
                        }
                    } else {
                        nodes[current].text.push_str(&text);
                    }
                }
                Event::CData(t) => {
                    let text = t.decode().map_err(|e| malformed(&e))?;
                    nodes[current].text.push_str(&text);
                }
                Event::GeneralRef(r) => {
                    let resolved = if r.is_char_ref() {
                        r.resolve_char_ref().map_err(|e| malformed(&e))?
                    } else {
                        let name = r.decode().map_err(|e| malformed(&e))?;
                        match name.as_ref() {
                            "lt" => Some('<'),
                            "gt" => Some('>'),
                            "amp" => Some('&'),
                            "apos" => Some('\''),
                            "quot" => Some('"'),
                            other => return Err(XmlError::UnknownEntity(truncate(other, 32))),
                        }
                    };
                    let Some(c) = resolved else {
                        return Err(XmlError::Malformed("character reference to nothing".into()));
                    };
                    nodes[current].text.push(c);
                }
                Event::DocType(_) => return Err(XmlError::Doctype),
                Event::Decl(_) | Event::PI(_) | Event::Comment(_) => {}
                Event::Eof => break,
            }
        }
        if open.len() != 1 {
            return Err(XmlError::Malformed("unclosed element at the end of the answer".into()));
        }
        if !seen_root_element {
            return Err(XmlError::Malformed("no root element".into()));
        }
        Ok(Document { nodes })
    }

    /// The element children of `node` named `name`.
    pub fn children<'a>(&'a self, node: NodeId, name: &'a Name) -> impl Iterator<Item = NodeId> + 'a {
        self.nodes[node].children.iter().copied().filter(move |&c| self.nodes[c].name.as_ref() == Some(name))
    }

    /// The first element child of `node`, whatever its name.
    pub fn first_child(&self, node: NodeId) -> Option<NodeId> {
        self.nodes[node].children.first().copied()
    }

    pub fn name(&self, node: NodeId) -> Option<&Name> {
        self.nodes[node].name.as_ref()
    }

    pub fn text(&self, node: NodeId) -> &str {
        &self.nodes[node].text
    }

    pub fn attribute(&self, node: NodeId, name: &Name) -> Option<&str> {
        self.nodes[node].attributes.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }

    /// The elements `selector.steps` reaches from `from`, in document order.
    pub fn select_elements(&self, from: NodeId, steps: &[Name]) -> Vec<NodeId> {
        let mut current = vec![from];
        for step in steps {
            current = current.iter().flat_map(|&n| self.children(n, step)).collect();
            if current.is_empty() {
                break;
            }
        }
        current
    }

    /// The values a selector reaches from `from`: element texts (trimmed), or the attribute's
    /// values, in document order.
    pub fn select<'a>(&'a self, from: NodeId, selector: &Selector) -> Vec<&'a str> {
        let elements = self.select_elements(from, &selector.steps);
        match &selector.attribute {
            Some(attribute) => elements.iter().filter_map(|&n| self.attribute(n, attribute)).collect(),
            None => elements.iter().map(|&n| self.text(n).trim()).collect(),
        }
    }
}

/// A resolved name's namespace URI (`None`: unqualified); an undeclared prefix is malformed.
fn namespace_of(resolved: ResolveResult<'_>) -> Result<Option<String>, XmlError> {
    match resolved {
        ResolveResult::Bound(ns) => Ok(Some(String::from_utf8_lossy(ns.as_ref()).into_owned())),
        ResolveResult::Unbound => Ok(None),
        ResolveResult::Unknown(prefix) => {
            let prefix = String::from_utf8_lossy(&prefix).into_owned();
            Err(XmlError::Malformed(format!("undeclared namespace prefix `{prefix}`")))
        }
    }
}

fn entity_error(message: &str) -> XmlError {
    XmlError::Malformed(truncate(message, 120))
}

fn truncate(s: &str, max: usize) -> String {
    s.chars().take(max).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: XmlLimits = XmlLimits { max_bytes: 64 * 1024, max_depth: 32 };

    fn namespaces() -> BTreeMap<String, String> {
        BTreeMap::from([("c".to_string(), "urn:crm".to_string())])
    }

    #[test]
    fn selectors_match_by_namespace_uri_not_prefix() {
        let a = br#"<a:Customer xmlns:a="urn:crm"><a:Name>Ada &amp; Co</a:Name><a:Tier>2</a:Tier></a:Customer>"#;
        let b = br#"<Customer xmlns="urn:crm"><Name>Ada &amp; Co</Name><Tier>2</Tier></Customer>"#;
        let other = br#"<a:Customer xmlns:a="urn:other"><a:Name>Ada</a:Name></a:Customer>"#;
        let selector = Selector::parse("/c:Customer/c:Name", &namespaces()).unwrap();
        for input in [&a[..], &b[..]] {
            let doc = Document::parse(input, LIMITS).unwrap();
            assert_eq!(doc.select(Document::ROOT, &selector), vec!["Ada & Co"]);
        }
        let doc = Document::parse(other, LIMITS).unwrap();
        assert!(doc.select(Document::ROOT, &selector).is_empty(), "same prefix, other namespace");
    }

    #[test]
    fn attributes_and_repeated_elements_are_selected_in_order() {
        let input = br#"<c:L xmlns:c="urn:crm"><c:A id="1">x</c:A><c:A id="2"><![CDATA[<y>]]></c:A></c:L>"#;
        let doc = Document::parse(input, LIMITS).unwrap();
        let ids = Selector::parse("c:L/c:A/@id", &namespaces()).unwrap();
        assert_eq!(doc.select(Document::ROOT, &ids), vec!["1", "2"]);
        let texts = Selector::parse("c:L/c:A", &namespaces()).unwrap();
        assert_eq!(doc.select(Document::ROOT, &texts), vec!["x", "<y>"]);
    }

    #[test]
    fn doctype_and_entities_are_refused() {
        let laughs = br#"<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol "lol"><!ENTITY lol2 "&lol;&lol;">]><lolz>&lol2;</lolz>"#;
        assert_eq!(Document::parse(laughs, LIMITS).unwrap_err(), XmlError::Doctype);
        let xxe = br#"<!DOCTYPE foo [<!ENTITY xxe SYSTEM "file:///etc/passwd">]><foo>&xxe;</foo>"#;
        assert_eq!(Document::parse(xxe, LIMITS).unwrap_err(), XmlError::Doctype);
        let undeclared = b"<foo>&xxe;</foo>";
        assert_eq!(Document::parse(undeclared, LIMITS).unwrap_err(), XmlError::UnknownEntity("xxe".into()));
    }

    #[test]
    fn limits_and_malformed_answers_are_errors() {
        let deep = "<a>".repeat(40) + &"</a>".repeat(40);
        assert_eq!(Document::parse(deep.as_bytes(), LIMITS).unwrap_err(), XmlError::TooDeep { limit: 32 });
        let big = vec![b' '; LIMITS.max_bytes + 1];
        assert!(matches!(Document::parse(&big, LIMITS), Err(XmlError::TooLarge { .. })));
        for bad in [&b"<a><b></a>"[..], b"<a>", b"", b"not xml", b"<a/><b/>", b"<p:a/>"] {
            assert!(
                matches!(Document::parse(bad, LIMITS), Err(XmlError::Malformed(_))),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn selector_errors_name_the_problem() {
        let ns = namespaces();
        assert!(Selector::parse("x:Name", &ns).unwrap_err().contains("prefix `x`"));
        assert!(Selector::parse("c:A/@id/c:B", &ns).unwrap_err().contains("last step"));
        assert!(Selector::parse("", &ns).is_err());
        assert!(Selector::parse("c:A//c:B", &ns).is_err());
    }
}
