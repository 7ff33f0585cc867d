//! Route matching: host (exact, then `*.suffix` wildcard, then any), then path
//! pattern with matchit, then method.

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::Arc;

use http::Method;

/// Path parameters captured by a route pattern, in pattern order. The names
/// are shared with the route table and the values are byte ranges of the
/// matched path, so a lookup allocates nothing for up to four parameters;
/// read them back with the path the lookup was given.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Params {
    names: Arc<[Box<str>]>,
    spans: Spans,
}

const INLINE_PARAMS: usize = 4;

#[derive(Debug, Clone, PartialEq, Eq)]
enum Spans {
    Inline([(u32, u32); INLINE_PARAMS], u8),
    Heap(Vec<(u32, u32)>),
}

impl Default for Spans {
    fn default() -> Spans {
        Spans::Inline([(0, 0); INLINE_PARAMS], 0)
    }
}

impl Spans {
    fn as_slice(&self) -> &[(u32, u32)] {
        match self {
            Spans::Inline(spans, len) => &spans[..*len as usize],
            Spans::Heap(spans) => spans,
        }
    }
}

impl Params {
    /// How many parameters were captured.
    pub fn len(&self) -> usize {
        self.spans.as_slice().len()
    }

    /// Whether the pattern captured none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// `(name, value)` pairs; `path` must be the path the lookup matched.
    pub fn iter<'a>(&'a self, path: &'a str) -> impl Iterator<Item = (&'a str, &'a str)> + 'a {
        self.names
            .iter()
            .zip(self.spans.as_slice())
            .map(move |(name, &(start, end))| {
                (
                    &**name,
                    path.get(start as usize..end as usize).unwrap_or(""),
                )
            })
    }

    /// One parameter's value by name.
    pub fn get<'a>(&'a self, path: &'a str, name: &str) -> Option<&'a str> {
        self.iter(path).find(|(n, _)| *n == name).map(|(_, v)| v)
    }

    /// Owned `(name, value)` pairs.
    pub fn to_vec(&self, path: &str) -> Vec<(String, String)> {
        self.iter(path)
            .map(|(n, v)| (n.to_string(), v.to_string()))
            .collect()
    }

    /// Parameters given as pairs rather than matched (the conformance kit's
    /// cases): the path they are ranges of is the values joined.
    pub fn from_pairs(pairs: &[(String, String)]) -> (String, Params) {
        let mut path = String::new();
        let mut spans = Vec::new();
        for (_, value) in pairs {
            let start = path.len() as u32;
            path.push_str(value);
            spans.push((start, path.len() as u32));
        }
        let names: Arc<[Box<str>]> = pairs.iter().map(|(n, _)| n.as_str().into()).collect();
        let params = Params {
            names,
            spans: Spans::Heap(spans),
        };
        (path, params)
    }

    fn capture(names: &Arc<[Box<str>]>, path: &str, m: &matchit::Params<'_, '_>) -> Params {
        // matchit's values borrow from `path`, so each is a sub-slice whose
        // offset locates it.
        let base = path.as_ptr() as usize;
        let span = |v: &str| {
            let start = (v.as_ptr() as usize).wrapping_sub(base);
            if v.is_empty() || start + v.len() > path.len() {
                return (0, 0);
            }
            (start as u32, (start + v.len()) as u32)
        };
        let spans = if m.len() <= INLINE_PARAMS {
            let mut inline = [(0, 0); INLINE_PARAMS];
            for (slot, (_, v)) in inline.iter_mut().zip(m.iter()) {
                *slot = span(v);
            }
            Spans::Inline(inline, m.len() as u8)
        } else {
            Spans::Heap(m.iter().map(|(_, v)| span(v)).collect())
        };
        Params {
            names: names.clone(),
            spans,
        }
    }
}

/// The parameter names of a matchit pattern, in order: `{id}` and `{*rest}`
/// (`{{` and `}}` are escaped braces).
fn param_names(pattern: &str) -> Arc<[Box<str>]> {
    let mut names = Vec::new();
    let mut chars = pattern.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '{' if chars.peek() == Some(&'{') => {
                chars.next();
            }
            '}' if chars.peek() == Some(&'}') => {
                chars.next();
            }
            '{' => {
                let name: String = chars.by_ref().take_while(|&c| c != '}').collect();
                names.push(name.trim_start_matches('*').into());
            }
            _ => {}
        }
    }
    names.into()
}

/// The result of a lookup.
#[derive(Debug, PartialEq, Eq)]
pub enum Lookup {
    /// Route index and captured parameters.
    Found(usize, Params),
    /// A path matched but no route there takes the method; the methods that would.
    MethodNotAllowed(Vec<Method>),
    /// Nothing matched.
    NotFound,
}

/// What the router needs to know of a route.
#[derive(Debug, Clone)]
pub struct RouteKey {
    /// Exact or `*.suffix` host, or any.
    pub host: Option<String>,
    /// matchit pattern.
    pub path: String,
    /// Accepted methods; `None` accepts all.
    pub methods: Option<Vec<Method>>,
}

#[derive(Default)]
struct PathTable {
    router: matchit::Router<usize>,
    /// Per node: the routes sharing that pattern, with their methods.
    nodes: Vec<Vec<(usize, Option<Vec<Method>>)>>,
    /// Per node: the pattern's parameter names.
    names: Vec<Arc<[Box<str>]>>,
    by_pattern: HashMap<String, usize>,
}

impl PathTable {
    fn insert(
        &mut self,
        pattern: &str,
        route: usize,
        methods: Option<Vec<Method>>,
    ) -> Result<(), String> {
        if let Some(&node) = self.by_pattern.get(pattern) {
            let entries = &mut self.nodes[node];
            let overlaps = entries.iter().any(|(_, m)| match (m, &methods) {
                (None, _) | (_, None) => true,
                (Some(a), Some(b)) => a.iter().any(|x| b.contains(x)),
            });
            if overlaps {
                return Err(format!(
                    "path {pattern:?} with these methods is already routed"
                ));
            }
            entries.push((route, methods));
            return Ok(());
        }
        let node = self.nodes.len();
        self.router
            .insert(pattern, node)
            .map_err(|e| format!("path {pattern:?}: {e}"))?;
        self.nodes.push(vec![(route, methods)]);
        self.names.push(param_names(pattern));
        self.by_pattern.insert(pattern.to_string(), node);
        Ok(())
    }

    fn lookup(&self, method: &Method, path: &str) -> Lookup {
        let Ok(m) = self.router.at(path) else {
            return Lookup::NotFound;
        };
        let entries = &self.nodes[*m.value];
        match entries
            .iter()
            .find(|(_, methods)| methods.as_ref().is_none_or(|ms| ms.contains(method)))
        {
            Some((route, _)) => {
                let names = &self.names[*m.value];
                debug_assert_eq!(names.len(), m.params.len(), "pattern names parsed");
                Lookup::Found(*route, Params::capture(names, path, &m.params))
            }
            None => Lookup::MethodNotAllowed(
                entries
                    .iter()
                    .flat_map(|(_, m)| m.iter().flatten().cloned())
                    .collect(),
            ),
        }
    }
}

/// All routes of a snapshot, indexed for lookup.
#[derive(Default)]
pub struct Router {
    exact: HashMap<String, PathTable>,
    /// `(".example.com", table)`, longest suffix first.
    wildcard: Vec<(String, PathTable)>,
    any: PathTable,
}

impl std::fmt::Debug for Router {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Router")
            .field("hosts", &self.exact.len())
            .field("wildcards", &self.wildcard.len())
            .finish()
    }
}

impl Router {
    /// Index `routes`; errors are `(route index, message)`.
    pub fn build(routes: &[RouteKey]) -> Result<Router, Vec<(usize, String)>> {
        let mut router = Router::default();
        let mut errors = Vec::new();
        for (i, r) in routes.iter().enumerate() {
            let table = match r.host.as_deref().map(str::to_ascii_lowercase) {
                None => &mut router.any,
                Some(h) if h.starts_with("*.") => {
                    let suffix = h[1..].to_string();
                    match router.wildcard.iter().position(|(s, _)| *s == suffix) {
                        Some(p) => &mut router.wildcard[p].1,
                        None => {
                            router.wildcard.push((suffix, PathTable::default()));
                            &mut router.wildcard.last_mut().expect("just pushed").1
                        }
                    }
                }
                Some(h) => router.exact.entry(h).or_default(),
            };
            if let Err(e) = table.insert(&r.path, i, r.methods.clone()) {
                errors.push((i, e));
            }
        }
        router
            .wildcard
            .sort_by_key(|(s, _)| std::cmp::Reverse(s.len()));
        if errors.is_empty() {
            Ok(router)
        } else {
            Err(errors)
        }
    }

    /// Find the route for `host` (port ignored), `method` and `path`. A more
    /// specific host table that has no matching path falls through to the
    /// less specific ones.
    pub fn lookup(&self, host: &str, method: &Method, path: &str) -> Lookup {
        let host = strip_port(host);
        // Hosts are almost always sent lower-case: copy only when not.
        let host = if host.bytes().any(|b| b.is_ascii_uppercase()) {
            Cow::Owned(host.to_ascii_lowercase())
        } else {
            Cow::Borrowed(host)
        };
        let mut not_allowed = None;
        let exact = if self.exact.is_empty() {
            None
        } else {
            self.exact.get(&*host)
        };
        let tables = exact
            .into_iter()
            .chain(
                self.wildcard
                    .iter()
                    .filter(|(s, _)| host.ends_with(s.as_str()) && host.len() > s.len())
                    .map(|(_, t)| t),
            )
            .chain(std::iter::once(&self.any));
        for table in tables {
            match table.lookup(method, path) {
                Lookup::Found(r, p) => return Lookup::Found(r, p),
                Lookup::MethodNotAllowed(m) => {
                    not_allowed.get_or_insert(m);
                }
                Lookup::NotFound => {}
            }
        }
        not_allowed.map_or(Lookup::NotFound, Lookup::MethodNotAllowed)
    }
}

fn strip_port(host: &str) -> &str {
    if host.starts_with('[') {
        return host.split_once(']').map_or(host, |(h, _)| &h[1..]);
    }
    host.rsplit_once(':').map_or(host, |(h, _)| h)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(host: Option<&str>, path: &str, methods: Option<&[&str]>) -> RouteKey {
        RouteKey {
            host: host.map(str::to_string),
            path: path.to_string(),
            methods: methods.map(|ms| ms.iter().map(|m| m.parse().unwrap()).collect()),
        }
    }

    #[test]
    fn params_and_catch_all_are_captured() {
        let r = Router::build(&[
            key(None, "/users/{id}", None),
            key(None, "/static/{*rest}", None),
        ])
        .unwrap();
        let found = |path: &str| match r.lookup("x", &Method::GET, path) {
            Lookup::Found(i, params) => (i, params.to_vec(path)),
            other => panic!("{path}: {other:?}"),
        };
        assert_eq!(found("/users/42"), (0, vec![("id".into(), "42".into())]));
        assert_eq!(
            found("/static/a/b.css"),
            (1, vec![("rest".into(), "a/b.css".into())])
        );
        assert_eq!(r.lookup("x", &Method::GET, "/nope"), Lookup::NotFound);
    }

    #[test]
    fn many_params_and_escaped_braces() {
        let r = Router::build(&[
            key(None, "/{a}/{b}/{c}/{d}/{e}/x", None),
            key(None, "/lit/{{raw}}/{id}", None),
        ])
        .unwrap();
        let path = "/1/22/333/4444/55555/x";
        let Lookup::Found(0, params) = r.lookup("h", &Method::GET, path) else {
            panic!("five params");
        };
        assert_eq!(params.len(), 5);
        assert_eq!(params.get(path, "e"), Some("55555"));
        assert_eq!(params.get(path, "c"), Some("333"));
        let path = "/lit/{raw}/7";
        let Lookup::Found(1, params) = r.lookup("h", &Method::GET, path) else {
            panic!("escaped braces");
        };
        assert_eq!(params.to_vec(path), vec![("id".into(), "7".into())]);
    }

    #[test]
    fn host_tables_are_tried_most_specific_first() {
        let r = Router::build(&[
            key(Some("api.example.com"), "/", None),
            key(Some("*.example.com"), "/", None),
            key(None, "/", None),
        ])
        .unwrap();
        assert_eq!(
            r.lookup("API.example.com:8080", &Method::GET, "/"),
            Lookup::Found(0, Params::default())
        );
        assert_eq!(
            r.lookup("www.example.com", &Method::GET, "/"),
            Lookup::Found(1, Params::default())
        );
        assert_eq!(
            r.lookup("example.com", &Method::GET, "/"),
            Lookup::Found(2, Params::default())
        );
    }

    #[test]
    fn methods_split_one_path() {
        let r = Router::build(&[
            key(None, "/items", Some(&["GET"])),
            key(None, "/items", Some(&["POST"])),
        ])
        .unwrap();
        assert_eq!(
            r.lookup("h", &Method::POST, "/items"),
            Lookup::Found(1, Params::default())
        );
        assert_eq!(
            r.lookup("h", &Method::DELETE, "/items"),
            Lookup::MethodNotAllowed(vec![Method::GET, Method::POST])
        );
    }

    #[test]
    fn conflicting_routes_are_reported() {
        let errs =
            Router::build(&[key(None, "/a/{x}", None), key(None, "/a/{y}", None)]).unwrap_err();
        assert_eq!(errs[0].0, 1);
        let errs =
            Router::build(&[key(None, "/a", None), key(None, "/a", Some(&["GET"]))]).unwrap_err();
        assert_eq!(errs[0].0, 1);
    }
}
