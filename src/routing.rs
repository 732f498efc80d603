//! Route matching, compiled once at start-up; `request_filter` asks it which route a request is.
//!
//! Templates are `/literal/{name}/{*rest}`, compiled into a segment tree searched with
//! backtracking, so at every segment a literal beats a parameter beats a catch-all. (`matchit`,
//! the usual crate, refuses a parameter and a catch-all at the same position, which the contract
//! needs.) Routes whose templates differ only by parameter names share one tree entry (a
//! "shape") and are told apart by method; the same shape with overlapping methods is ambiguous.

use std::collections::HashMap;
use std::sync::Arc;

use http::Method;
use percent_encoding::{percent_decode_str, utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};

/// Longest decoded path parameter accepted; longer ones are a 400, not a backend's problem.
pub const MAX_PARAM_BYTES: usize = 1024;

/// Every byte but RFC 3986 unreserved characters is encoded when a parameter is written into an
/// upstream path or query, so a value can never add a segment, a query key or a fragment.
const PARAM_ENCODE: &AsciiSet = &NON_ALPHANUMERIC.remove(b'-').remove(b'.').remove(b'_').remove(b'~');

#[derive(Debug, Clone, PartialEq, Eq)]
enum Segment {
    Literal(String),
    Param(String),
    CatchAll(String),
}

/// A parsed `match.path`.
#[derive(Debug, Clone)]
pub struct PathTemplate {
    source: String,
    segments: Vec<Segment>,
}

impl PathTemplate {
    pub fn parse(source: &str) -> Result<Self, String> {
        let Some(rest) = source.strip_prefix('/') else {
            return Err(format!("path template `{source}` must start with `/`"));
        };
        let mut segments = Vec::new();
        let mut names: Vec<&str> = Vec::new();
        let parts: Vec<&str> = if rest.is_empty() { Vec::new() } else { rest.split('/').collect() };
        for (i, part) in parts.iter().enumerate() {
            let last = i + 1 == parts.len();
            let segment = if let Some(inner) = part.strip_prefix('{').and_then(|p| p.strip_suffix('}')) {
                let (catch_all, name) = match inner.strip_prefix('*') {
                    Some(name) => (true, name),
                    None => (false, inner),
                };
                if !is_param_name(name) {
                    return Err(format!(
                        "path template `{source}`: `{part}` is not a valid parameter (use {{name}} or {{*name}}, name of letters, digits and `_`)"
                    ));
                }
                if names.contains(&name) {
                    return Err(format!("path template `{source}`: parameter `{name}` appears twice"));
                }
                names.push(name);
                if catch_all {
                    if !last {
                        return Err(format!("path template `{source}`: catch-all `{part}` must be the last segment"));
                    }
                    Segment::CatchAll(name.to_string())
                } else {
                    Segment::Param(name.to_string())
                }
            } else {
                if part.contains(['{', '}', '?', '#', '*']) {
                    return Err(format!(
                        "path template `{source}`: segment `{part}` mixes a parameter with text or holds `{{ }} ? # *` (a parameter takes a whole segment)"
                    ));
                }
                if part.is_empty() && !last {
                    return Err(format!("path template `{source}` has an empty segment (`//`)"));
                }
                if *part == "." || *part == ".." {
                    return Err(format!("path template `{source}` has a dot segment"));
                }
                Segment::Literal(part.to_string())
            };
            segments.push(segment);
        }
        Ok(PathTemplate { source: source.to_string(), segments })
    }

    pub fn source(&self) -> &str {
        &self.source
    }

    /// Parameter names in order of appearance.
    pub fn param_names(&self) -> Vec<&str> {
        self.segments
            .iter()
            .filter_map(|s| match s {
                Segment::Param(n) | Segment::CatchAll(n) => Some(n.as_str()),
                Segment::Literal(_) => None,
            })
            .collect()
    }

    fn is_catch_all(&self, name: &str) -> bool {
        self.segments.iter().any(|s| matches!(s, Segment::CatchAll(n) if n == name))
    }

    /// The template with parameters renamed by position: routes that differ only by parameter
    /// names have the same shape (and one tree entry).
    fn shape(&self) -> String {
        let mut shape = String::new();
        let mut n = 0;
        for segment in &self.segments {
            shape.push('/');
            match segment {
                Segment::Literal(l) => shape.push_str(l),
                Segment::Param(_) => {
                    shape.push_str(&format!("{{p{n}}}"));
                    n += 1;
                }
                Segment::CatchAll(_) => {
                    shape.push_str(&format!("{{*p{n}}}"));
                    n += 1;
                }
            }
        }
        if shape.is_empty() {
            shape.push('/');
        }
        shape
    }
}

fn is_param_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// `upstream_path`: literal text with `{name}` references to the route's path parameters.
#[derive(Debug, Clone)]
pub struct RewriteTemplate {
    parts: Vec<RewritePart>,
    has_query: bool,
}

#[derive(Debug, Clone)]
enum RewritePart {
    Literal(String),
    /// Index into the route's parameters; catch-alls keep their `/` separators.
    Param {
        index: usize,
        catch_all: bool,
    },
}

impl RewriteTemplate {
    pub fn parse(source: &str, path: &PathTemplate) -> Result<Self, String> {
        if !source.starts_with('/') {
            return Err(format!("`{source}` must start with `/`"));
        }
        let names = path.param_names();
        let mut parts = Vec::new();
        let mut rest = source;
        while let Some(open) = rest.find('{') {
            if open > 0 {
                parts.push(RewritePart::Literal(rest[..open].to_string()));
            }
            let Some(close) = rest[open..].find('}') else {
                return Err(format!("`{source}` has an unclosed `{{`"));
            };
            let name = rest[open + 1..open + close].trim_start_matches('*');
            let Some(index) = names.iter().position(|n| *n == name) else {
                return Err(format!(
                    "`{source}` refers to `{{{name}}}`, which is not a parameter of `{}`",
                    path.source()
                ));
            };
            parts.push(RewritePart::Param { index, catch_all: path.is_catch_all(name) });
            rest = &rest[open + close + 1..];
        }
        if rest.contains('}') {
            return Err(format!("`{source}` has a `}}` without `{{`"));
        }
        if !rest.is_empty() {
            parts.push(RewritePart::Literal(rest.to_string()));
        }
        for part in &parts {
            if let RewritePart::Literal(l) = part {
                if l.contains(|c: char| c.is_ascii_whitespace() || c.is_ascii_control() || c == '#') {
                    return Err(format!("`{source}` holds whitespace, a control character or `#`"));
                }
            }
        }
        Ok(RewriteTemplate { parts, has_query: source.contains('?') })
    }

    /// The upstream path and query for one request. `caller_query` is appended when the route
    /// forwards the caller's query string.
    pub fn render(&self, params: &PathParams, caller_query: Option<&str>) -> String {
        let mut out = String::with_capacity(64);
        for part in &self.parts {
            match part {
                RewritePart::Literal(l) => out.push_str(l),
                RewritePart::Param { index, catch_all } => {
                    let raw = params.raw(*index);
                    if *catch_all {
                        // Re-encode each raw segment on its own so an encoded `%2F` stays one.
                        for (i, segment) in raw.split('/').enumerate() {
                            if i > 0 {
                                out.push('/');
                            }
                            let decoded = percent_decode_str(segment).decode_utf8_lossy();
                            out.extend(utf8_percent_encode(&decoded, PARAM_ENCODE));
                        }
                    } else {
                        out.extend(utf8_percent_encode(params.value(*index), PARAM_ENCODE));
                    }
                }
            }
        }
        if let Some(q) = caller_query.filter(|q| !q.is_empty()) {
            out.push(if self.has_query { '&' } else { '?' });
            out.push_str(q);
        }
        out
    }
}

/// Path parameters of one request: decoded values for later phases, raw text for rewriting.
#[derive(Debug, Default, Clone)]
pub struct PathParams {
    names: Arc<[String]>,
    raw: Vec<String>,
    decoded: Vec<String>,
}

impl PathParams {
    pub fn get(&self, name: &str) -> Option<&str> {
        self.names.iter().position(|n| n == name).map(|i| self.decoded[i].as_str())
    }

    /// Parameters given by name (offline golden cases, unit tests).
    pub fn from_pairs(pairs: &[(&str, &str)]) -> PathParams {
        PathParams {
            names: pairs.iter().map(|(n, _)| n.to_string()).collect(),
            raw: pairs.iter().map(|(_, v)| v.to_string()).collect(),
            decoded: pairs.iter().map(|(_, v)| v.to_string()).collect(),
        }
    }

    fn value(&self, index: usize) -> &str {
        &self.decoded[index]
    }

    fn raw(&self, index: usize) -> &str {
        &self.raw[index]
    }
}

/// A route as the router sees it: its methods, and its parameter names by position.
struct Candidate {
    route: usize,
    methods: Option<Vec<Method>>,
    param_names: Arc<[String]>,
}

/// What the router says about one request.
pub enum RouteMatch {
    Found {
        route: usize,
        params: PathParams,
    },
    /// The path matches routes, none for this method; `allow` is the `Allow` header value.
    MethodNotAllowed {
        allow: String,
    },
    NotFound,
    /// A parameter did not decode to UTF-8 or is longer than [`MAX_PARAM_BYTES`].
    BadParam {
        reason: String,
    },
}

pub struct Router {
    tree: Node,
    shapes: Vec<Vec<Candidate>>,
}

/// One position in the segment tree; `end` / `catch_all` hold shape indexes.
#[derive(Default)]
struct Node {
    literals: HashMap<String, Node>,
    param: Option<Box<Node>>,
    catch_all: Option<usize>,
    end: Option<usize>,
}

impl Node {
    fn insert(&mut self, segments: &[Segment], shape: usize) {
        match segments.split_first() {
            None => self.end = Some(shape),
            Some((Segment::Literal(l), rest)) => self.literals.entry(l.clone()).or_default().insert(rest, shape),
            Some((Segment::Param(_), rest)) => self.param.get_or_insert_with(Default::default).insert(rest, shape),
            Some((Segment::CatchAll(_), _)) => self.catch_all = Some(shape),
        }
    }

    /// `rest` is what follows the last consumed `/` (`None`: the path ended). Raw parameter
    /// values are pushed to `captured` in template order.
    fn find<'p>(&self, rest: Option<&'p str>, captured: &mut Vec<&'p str>) -> Option<usize> {
        let Some(rest) = rest else { return self.end };
        let (segment, after) = match rest.split_once('/') {
            Some((segment, after)) => (segment, Some(after)),
            None => (rest, None),
        };
        if let Some(found) = self.literals.get(segment).and_then(|child| child.find(after, captured)) {
            return Some(found);
        }
        if let (Some(child), false) = (&self.param, segment.is_empty()) {
            captured.push(segment);
            if let Some(found) = child.find(after, captured) {
                return Some(found);
            }
            captured.pop();
        }
        match self.catch_all {
            Some(shape) if !segment.is_empty() => {
                captured.push(rest);
                Some(shape)
            }
            _ => None,
        }
    }
}

/// One route handed to [`Router::build`].
pub struct RouteSpec<'a> {
    pub id: &'a str,
    pub methods: Option<Vec<Method>>,
    pub template: &'a PathTemplate,
}

impl Router {
    /// Compiles the routes; errors name the routes (by index and id) that conflict.
    pub fn build(routes: &[RouteSpec<'_>]) -> Result<Router, Vec<(usize, String)>> {
        let mut tree = Node::default();
        let mut shapes: Vec<Vec<Candidate>> = Vec::new();
        let mut by_shape: HashMap<String, usize> = HashMap::new();
        let mut errors = Vec::new();
        for (index, spec) in routes.iter().enumerate() {
            let slot = *by_shape.entry(spec.template.shape()).or_insert_with(|| {
                tree.insert(&spec.template.segments, shapes.len());
                shapes.push(Vec::new());
                shapes.len() - 1
            });
            for existing in &shapes[slot] {
                if methods_overlap(&existing.methods, &spec.methods) {
                    let other = &routes[existing.route];
                    errors.push((
                        index,
                        format!(
                            "ambiguous: path `{}` and its methods overlap route `{}` (`{}`)",
                            spec.template.source(),
                            other.id,
                            other.template.source()
                        ),
                    ));
                }
            }
            let param_names = spec.template.param_names().into_iter().map(String::from).collect();
            shapes[slot].push(Candidate { route: index, methods: spec.methods.clone(), param_names });
        }
        if errors.is_empty() {
            Ok(Router { tree, shapes })
        } else {
            Err(errors)
        }
    }

    /// `path` is the raw request path (no query), as received.
    pub fn find(&self, method: &Method, path: &str) -> RouteMatch {
        let Some(rest) = path.strip_prefix('/') else {
            return RouteMatch::NotFound;
        };
        let mut captured = Vec::new();
        let Some(shape) = self.tree.find(Some(rest).filter(|r| !r.is_empty()), &mut captured) else {
            return RouteMatch::NotFound;
        };
        let candidates = &self.shapes[shape];
        let Some(candidate) = candidates.iter().find(|c| method_allowed(&c.methods, method)) else {
            return RouteMatch::MethodNotAllowed { allow: allow_header(candidates) };
        };
        let mut params = PathParams {
            names: candidate.param_names.clone(),
            raw: Vec::with_capacity(captured.len()),
            decoded: Vec::with_capacity(captured.len()),
        };
        for raw in captured {
            let decoded = match percent_decode_str(raw).decode_utf8() {
                Ok(d) => d.into_owned(),
                Err(_) => return RouteMatch::BadParam { reason: "a path parameter is not valid UTF-8".into() },
            };
            if decoded.len() > MAX_PARAM_BYTES {
                return RouteMatch::BadParam {
                    reason: format!("a path parameter is longer than {MAX_PARAM_BYTES} bytes"),
                };
            }
            params.raw.push(raw.to_string());
            params.decoded.push(decoded);
        }
        RouteMatch::Found { route: candidate.route, params }
    }
}

fn methods_overlap(a: &Option<Vec<Method>>, b: &Option<Vec<Method>>) -> bool {
    match (a, b) {
        (Some(a), Some(b)) => a.iter().any(|m| b.contains(m)),
        _ => true,
    }
}

fn method_allowed(methods: &Option<Vec<Method>>, method: &Method) -> bool {
    match methods {
        None => true,
        // HEAD is answered wherever GET is, as HTTP says it should be.
        Some(list) => list.contains(method) || (method == Method::HEAD && list.contains(&Method::GET)),
    }
}

fn allow_header(candidates: &[Candidate]) -> String {
    let mut allow: Vec<&str> = Vec::new();
    for c in candidates {
        for m in c.methods.iter().flatten() {
            if !allow.contains(&m.as_str()) {
                allow.push(m.as_str());
            }
            if *m == Method::GET && !allow.contains(&"HEAD") {
                allow.push("HEAD");
            }
        }
    }
    allow.join(", ")
}

/// True when the raw path has a `.` or `..` segment, plain or percent-encoded: such paths are
/// refused rather than normalised, so a catch-all can never climb out of its upstream prefix.
pub fn has_dot_segment(path: &str) -> bool {
    path.split('/').any(|segment| {
        if !segment.contains(['.', '%']) {
            return false;
        }
        let decoded = percent_decode_str(segment).decode_utf8_lossy();
        decoded == "." || decoded == ".."
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn router(specs: &[(&str, Option<Vec<Method>>, &str)]) -> Result<Router, Vec<(usize, String)>> {
        let templates: Vec<PathTemplate> = specs.iter().map(|(_, _, p)| PathTemplate::parse(p).unwrap()).collect();
        let routes: Vec<RouteSpec> = specs
            .iter()
            .zip(&templates)
            .map(|((id, methods, _), template)| RouteSpec { id, methods: methods.clone(), template })
            .collect();
        Router::build(&routes)
    }

    fn found(r: &Router, method: Method, path: &str) -> Option<(usize, PathParams)> {
        match r.find(&method, path) {
            RouteMatch::Found { route, params } => Some((route, params)),
            _ => None,
        }
    }

    #[test]
    fn literal_beats_param_beats_catch_all() {
        let r =
            router(&[("rest", None, "/api/{*rest}"), ("param", None, "/api/{id}"), ("literal", None, "/api/special")])
                .unwrap();
        assert_eq!(found(&r, Method::GET, "/api/special").unwrap().0, 2);
        assert_eq!(found(&r, Method::GET, "/api/42").unwrap().0, 1);
        let (route, params) = found(&r, Method::GET, "/api/a/b%2Fc").unwrap();
        assert_eq!(route, 0);
        assert_eq!(params.get("rest"), Some("a/b/c"));
    }

    #[test]
    fn a_dead_end_literal_backtracks_to_a_parameter() {
        let r =
            router(&[("literal", None, "/b/special/end"), ("param", None, "/{a}/special/other"), ("root", None, "/")])
                .unwrap();
        assert_eq!(found(&r, Method::GET, "/b/special/end").unwrap().0, 0);
        let (route, params) = found(&r, Method::GET, "/b/special/other").unwrap();
        assert_eq!((route, params.get("a")), (1, Some("b")));
        assert_eq!(found(&r, Method::GET, "/").unwrap().0, 2);
        assert!(found(&r, Method::GET, "//special/other").is_none());
    }

    #[test]
    fn params_are_decoded_and_bounded() {
        let r = router(&[("a", Some(vec![Method::GET]), "/accounts/{accountId}")]).unwrap();
        let (_, params) = found(&r, Method::GET, "/accounts/caf%C3%A9%20x").unwrap();
        assert_eq!(params.get("accountId"), Some("café x"));
        let long = format!("/accounts/{}", "x".repeat(MAX_PARAM_BYTES + 1));
        assert!(matches!(r.find(&Method::GET, &long), RouteMatch::BadParam { .. }));
        assert!(matches!(r.find(&Method::GET, "/accounts/%FF"), RouteMatch::BadParam { .. }));
    }

    #[test]
    fn method_mismatch_lists_allowed_methods() {
        let r = router(&[("get", Some(vec![Method::GET]), "/a/{x}"), ("post", Some(vec![Method::POST]), "/a/{y}")])
            .unwrap();
        match r.find(&Method::DELETE, "/a/1") {
            RouteMatch::MethodNotAllowed { allow } => assert_eq!(allow, "GET, HEAD, POST"),
            _ => panic!("expected 405"),
        }
        let (route, params) = found(&r, Method::POST, "/a/1").unwrap();
        assert_eq!((route, params.get("y")), (1, Some("1")));
        assert!(found(&r, Method::HEAD, "/a/1").is_some());
        assert!(matches!(r.find(&Method::GET, "/b"), RouteMatch::NotFound));
    }

    #[test]
    fn overlapping_routes_are_refused() {
        let errors = router(&[
            ("one", Some(vec![Method::GET]), "/a/{x}"),
            ("two", Some(vec![Method::GET, Method::POST]), "/a/{y}"),
            ("three", None, "/b"),
            ("four", Some(vec![Method::PUT]), "/b"),
        ])
        .err()
        .unwrap();
        assert_eq!(errors.len(), 2);
        assert_eq!(errors[0].0, 1);
        assert!(errors[0].1.contains("route `one`"), "{}", errors[0].1);
        assert_eq!(errors[1].0, 3);
    }

    #[test]
    fn bad_templates_say_why() {
        for (bad, why) in [
            ("accounts", "must start"),
            ("/a/{*rest}/b", "must be the last"),
            ("/a/{x}/{x}", "appears twice"),
            ("/a/x{y}", "mixes"),
            ("/a/{}", "not a valid parameter"),
            ("/a//b", "empty segment"),
        ] {
            let err = PathTemplate::parse(bad).unwrap_err();
            assert!(err.contains(why), "{bad}: {err}");
        }
    }

    #[test]
    fn rewrite_encodes_params_for_path_and_query() {
        let template = PathTemplate::parse("/accounts/{accountId}/{*rest}").unwrap();
        let r = router(&[("a", None, "/accounts/{accountId}/{*rest}")]).unwrap();
        let (_, params) = found(&r, Method::GET, "/accounts/1%26admin%3Dtrue/x/y%2Fz").unwrap();
        let rewrite = RewriteTemplate::parse("/legacy/account?id={accountId}&p={rest}", &template).unwrap();
        assert_eq!(rewrite.render(&params, None), "/legacy/account?id=1%26admin%3Dtrue&p=x/y%2Fz");
        assert_eq!(rewrite.render(&params, Some("a=1")), "/legacy/account?id=1%26admin%3Dtrue&p=x/y%2Fz&a=1");
        let plain = RewriteTemplate::parse("/v2/{accountId}", &template).unwrap();
        assert_eq!(plain.render(&params, Some("a=1")), "/v2/1%26admin%3Dtrue?a=1");
        assert!(RewriteTemplate::parse("/x/{nope}", &template).unwrap_err().contains("not a parameter"));
    }

    #[test]
    fn dot_segments_are_detected() {
        assert!(has_dot_segment("/api/../admin"));
        assert!(has_dot_segment("/api/%2e%2E/admin"));
        assert!(has_dot_segment("/api/./x"));
        assert!(!has_dot_segment("/api/v1.2/x"));
    }
}
