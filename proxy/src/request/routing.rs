//! Route: where the request goes. The listener's route table decides by host and path; with
//! filters, their decisions (a cluster, a timeout, a retry policy, the route's name) come first.
//! A route with a direct response is answered here, as a local reply.

use std::borrow::Cow;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::uri::Authority;

use super::context::Exchange;
use super::filters::Filters;
use super::local_reply::LocalReply;
use super::prepare::Prepared;
use crate::config::RetryPolicy;
use crate::conn::ConnCtx;
use crate::route::{Action, Route};
use crate::snapshot::Snapshot;
use crate::upstream::Cluster;

/// The route timeout of a request sent to a cluster a filter chose where no route matched.
const UNROUTED_TIMEOUT: Duration = Duration::from_secs(15);

/// Where and how a request goes upstream: from its route, or from what a filter decided.
pub(super) struct Target<'a> {
    pub cluster: &'a Arc<Cluster>,
    pub timeout: Option<Duration>,
    pub retry: Option<Cow<'a, RetryPolicy>>,
}

impl<'a> Target<'a> {
    /// A route's target; a route with a direct response answers instead.
    fn of(route: &'a Route) -> Result<Target<'a>, LocalReply> {
        match &route.action {
            Action::Cluster(cluster) => Ok(Target {
                cluster,
                timeout: route.timeout,
                retry: route.retry.as_ref().map(Cow::Borrowed),
            }),
            Action::Direct(d) => Err(LocalReply::direct_response(d)),
        }
    }
}

/// Chooses the target of a request (no route: `404 NR`; a filter's unknown cluster: `503 NC`).
/// `looked_up` is the listener's route for the request when it was already found (for scoped
/// plugins, none of which ran: the request is as it was then).
pub(super) fn route<'s>(
    request: &Prepared,
    snapshot: &'s Snapshot,
    conn: &ConnCtx,
    filters: Option<&Filters>,
    looked_up: Option<Option<&'s Route>>,
    ex: &mut Exchange,
) -> Result<Target<'s>, LocalReply> {
    let route = looked_up.unwrap_or_else(|| {
        let host = request.authority.as_ref().map_or("", Authority::as_str);
        snapshot.routes[conn.listener].find(host, request.parts.uri.path())
    });
    let Some(filters) = filters else {
        let route = route.ok_or_else(LocalReply::no_route)?;
        ex.capture_route(route);
        return Target::of(route);
    };

    let decisions = filters.decisions();
    let mut target = match (&decisions.upstream_cluster, route) {
        (Some(name), route) => {
            let cluster = snapshot
                .cluster(name)
                .ok_or_else(LocalReply::cluster_not_found)?;
            Target {
                cluster,
                timeout: route.map_or(Some(UNROUTED_TIMEOUT), |r| r.timeout),
                retry: route.and_then(|r| r.retry.as_ref()).map(Cow::Borrowed),
            }
        }
        (None, Some(route)) => match Target::of(route) {
            Ok(target) => target,
            Err(direct) => {
                drop(decisions);
                name_request(filters, Some(route), None, ex);
                filters.keep_request_head(&request.parts);
                return Err(direct);
            }
        },
        (None, None) => return Err(LocalReply::no_route()),
    };
    if let Some(ms) = decisions.timeout_ms {
        target.timeout = (ms > 0).then(|| Duration::from_millis(ms));
    }
    if let Some(policy) = &decisions.retry_policy {
        target.retry = Some(Cow::Owned(policy.clone()));
    }
    drop(decisions);
    name_request(filters, route, Some(&target.cluster.name), ex);
    Ok(target)
}

/// Names the request's route (the one a plugin chose, as the router's VirtualService route,
/// else the listener's) and cluster (none for a direct response) for the log and the filters.
fn name_request(
    filters: &Filters,
    route: Option<&Route>,
    cluster: Option<&Arc<str>>,
    ex: &mut Exchange,
) {
    let route_name = filters.chosen_route_name().unwrap_or_else(|| {
        route.map_or_else(Bytes::new, |r| Bytes::copy_from_slice(r.name.as_bytes()))
    });
    ex.capture_names(&route_name, cluster.map(|c| &**c));
    filters.record_route(route_name, cluster);
}
