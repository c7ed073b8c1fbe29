//! Where a plugin runs: the routes and clusters a plugin is scoped to (Envoy's per-route
//! filter config). A plugin out of scope is never entered for the stream.

use bytes::Bytes;
use rustc_hash::FxHashSet;

use crate::stream::Stream;

/// The routes and clusters a plugin runs on (an empty set does not narrow), and whether it
/// runs on requests without a route.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Scope {
    routes: FxHashSet<Box<[u8]>>,
    clusters: FxHashSet<Box<str>>,
    unrouted: bool,
}

impl Scope {
    pub fn new(
        routes: impl IntoIterator<Item = String>,
        clusters: impl IntoIterator<Item = String>,
        unrouted: bool,
    ) -> Scope {
        Scope {
            routes: routes
                .into_iter()
                .map(|r| r.into_bytes().into_boxed_slice())
                .collect(),
            clusters: clusters.into_iter().map(String::into_boxed_str).collect(),
            unrouted,
        }
    }

    /// Whether a request on `route` to `cluster` is in scope (`route` empty: it has none).
    pub fn admits(&self, route: &[u8], cluster: &str) -> bool {
        if route.is_empty() && self.unrouted {
            return true;
        }
        let narrowed = !self.routes.is_empty() || !self.clusters.is_empty();
        narrowed
            && (self.routes.is_empty() || self.routes.contains(route))
            && (self.clusters.is_empty() || self.clusters.contains(cluster))
    }

    /// Whether the stream, as the filters before this one left it, is in scope: the route an
    /// earlier filter named, else the embedder's route; the cluster an earlier filter chose,
    /// else the embedder's.
    pub(crate) fn admits_stream(&self, stream: &Stream) -> bool {
        let named: Option<Bytes> = stream
            .filter_state
            .borrow()
            .get("wasmesh.route_name")
            .cloned();
        let info = stream.info.borrow();
        let route = named.as_deref().unwrap_or(&info.route_name);
        let decisions = stream.decisions.borrow();
        let cluster = decisions
            .upstream_cluster
            .as_deref()
            .unwrap_or(&info.cluster_name);
        self.admits(route, cluster)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_given_set_must_match_or_the_request_has_no_route() {
        let by_route = Scope::new(["vs/a".to_owned()], [], false);
        assert!(by_route.admits(b"vs/a", "any"));
        assert!(!by_route.admits(b"vs/b", "any"));
        assert!(!by_route.admits(b"", ""));
        let both = Scope::new(["vs/a".to_owned()], ["c1".to_owned()], false);
        assert!(both.admits(b"vs/a", "c1"));
        assert!(!both.admits(b"vs/a", "c2"));
        assert!(!both.admits(b"", "c1"));
        let unrouted = Scope::new([], [], true);
        assert!(unrouted.admits(b"", ""));
        assert!(!unrouted.admits(b"vs/a", "c1"));
        let and_routes = Scope::new(["vs/a".to_owned()], [], true);
        assert!(and_routes.admits(b"", ""));
        assert!(and_routes.admits(b"vs/a", "c1"));
        assert!(!and_routes.admits(b"vs/b", "c1"));
    }
}
