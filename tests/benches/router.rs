//! Route matching (`wicket::router::Router::lookup`) at 100, 1,000 and 10,000
//! routes of realistic shapes: versioned API paths with parameters, nested
//! resources, catch-alls, method-split paths and a share of host-bound routes.
//!
//! Run with `cargo bench -p wicket-tests --bench router`.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use http::Method;
use wicket::router::{Lookup, RouteKey, Router};

pub const SIZES: [usize; 3] = [100, 1_000, 10_000];

/// Route `i` of a table: one of five shapes, one route in ten bound to a host.
fn key(i: usize) -> RouteKey {
    let svc = i / 5;
    let (path, methods) = match i % 5 {
        0 => (format!("/api/v1/svc{svc}/users/{{id}}"), None),
        1 => (
            format!("/api/v2/svc{svc}/orders/{{order}}/items/{{item}}"),
            None,
        ),
        2 => (format!("/svc{svc}/static/{{*rest}}"), None),
        3 => (
            format!("/tenants/{{tenant}}/svc{svc}/reports"),
            Some(vec![Method::GET]),
        ),
        _ => (format!("/api/v1/svc{svc}/users"), Some(vec![Method::POST])),
    };
    let host = (i % 10 == 9).then(|| format!("svc{svc}.example.com"));
    RouteKey {
        host,
        path,
        methods,
    }
}

fn router(n: usize) -> Router {
    let keys: Vec<RouteKey> = (0..n).map(key).collect();
    Router::build(&keys).unwrap_or_else(|e| panic!("bench routes conflict: {e:?}"))
}

fn lookups(c: &mut Criterion) {
    let mut group = c.benchmark_group("route_match");
    for n in SIZES {
        let r = router(n);
        // A route from the middle of the table, two parameters deep.
        let svc = n / 2 / 5;
        let hit = format!("/api/v2/svc{svc}/orders/o-81723/items/i-42");
        assert!(matches!(
            r.lookup("api.example.com", &Method::GET, &hit),
            Lookup::Found(_, ref p) if p.len() == 2
        ));
        group.bench_function(BenchmarkId::new("hit_2_params", n), |b| {
            b.iter(|| r.lookup("api.example.com", &Method::GET, &hit));
        });
        let catch_all = format!("/svc{svc}/static/css/site/main.css");
        group.bench_function(BenchmarkId::new("hit_catch_all", n), |b| {
            b.iter(|| r.lookup("api.example.com:8080", &Method::GET, &catch_all));
        });
        let miss = format!("/api/v3/svc{svc}/nothing/here");
        assert_eq!(
            r.lookup("api.example.com", &Method::GET, &miss),
            Lookup::NotFound
        );
        group.bench_function(BenchmarkId::new("miss", n), |b| {
            b.iter(|| r.lookup("api.example.com", &Method::GET, &miss));
        });
    }
    group.finish();
}

criterion_group!(benches, lookups);
criterion_main!(benches);
