//! Route matching: host (exact, then `*.suffix` wildcard, then any), then path
//! pattern with matchit, then method.

use std::collections::HashMap;

use http::Method;

/// Path parameters captured by a route pattern, in pattern order.
pub type Params = Vec<(String, String)>;

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
                let params = m
                    .params
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect();
                Lookup::Found(*route, params)
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
        let host = strip_port(host).to_ascii_lowercase();
        let mut not_allowed = None;
        let tables = self
            .exact
            .get(&host)
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
        assert_eq!(
            r.lookup("x", &Method::GET, "/users/42"),
            Lookup::Found(0, vec![("id".into(), "42".into())])
        );
        assert_eq!(
            r.lookup("x", &Method::GET, "/static/a/b.css"),
            Lookup::Found(1, vec![("rest".into(), "a/b.css".into())])
        );
        assert_eq!(r.lookup("x", &Method::GET, "/nope"), Lookup::NotFound);
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
            Lookup::Found(0, vec![])
        );
        assert_eq!(
            r.lookup("www.example.com", &Method::GET, "/"),
            Lookup::Found(1, vec![])
        );
        assert_eq!(
            r.lookup("example.com", &Method::GET, "/"),
            Lookup::Found(2, vec![])
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
            Lookup::Found(1, vec![])
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
