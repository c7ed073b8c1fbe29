//! Istio's peer metadata exchange over HTTP (the `istio.metadata_exchange` filter), hooked
//! into the request's phases: the source sends its own metadata on requests to mesh clusters
//! (ISTIO_MUTUAL: another sidecar) and reads the destination's from the response; the
//! destination reads the source's (trusted only on a verified mTLS connection) and answers
//! with its own when asked. Both headers are removed before the request reaches the workload
//! and before a mesh cluster's response reaches the caller. Metadata that does not decode is
//! ignored: the peer is `unknown`, the request goes on (`peer_metadata` is the codec).

use http::header::HeaderMap;
use http::uri::Authority;

use super::metrics::RequestTelemetry;
use super::metrics_labels::Reporter;
use super::peer_metadata::{PEER_METADATA, PEER_METADATA_ID, is_mesh};
use crate::conn::ConnCtx;
use crate::upstream::Cluster;

/// Prepare: on the destination side, the caller's headers are removed (the workload never
/// sees them) and taken as its metadata only from a verified mTLS peer. On either side, the
/// authority is kept as the service to name when the cluster names none.
pub(crate) fn on_request(
    headers: &mut HeaderMap,
    authority: Option<&Authority>,
    conn: &ConnCtx,
    t: &mut RequestTelemetry,
) {
    let Some(reporter) = t.reporter() else { return };
    // A client's host names the service only where no cluster does.
    t.set_host(authority);
    if reporter != Reporter::Destination {
        return;
    }
    let id = headers.remove(&PEER_METADATA_ID);
    let metadata = headers.remove(&PEER_METADATA);
    t.asked = id.is_some() || metadata.is_some();
    if let Some(value) = metadata
        && conn.peer_uri_san.is_some()
    {
        t.set_peer(value.as_bytes());
    }
}

/// Forward: the source tells a mesh cluster who calls; the cluster names the service.
pub(crate) fn on_forward(headers: &mut HeaderMap, cluster: &Cluster, t: &mut RequestTelemetry) {
    if t.reporter().is_none() {
        return;
    }
    t.set_cluster(cluster);
    if t.reporter() != Some(Reporter::Source) || !is_mesh(&cluster.config) {
        return;
    }
    // Ours replace the workload's; without ours, the workload's must not pass as ours either.
    match t.local_headers() {
        Some(local) => local.insert_into(headers),
        None => {
            headers.remove(&PEER_METADATA_ID);
            headers.remove(&PEER_METADATA);
        }
    }
}

/// The upstream's response: on the source side, a mesh cluster's (a sidecar's) metadata is
/// read and removed. Other servers were not asked, and are not believed.
pub(crate) fn on_upstream_response(
    headers: &mut HeaderMap,
    cluster: &Cluster,
    t: &mut RequestTelemetry,
) {
    if t.reporter() != Some(Reporter::Source) || !is_mesh(&cluster.config) {
        return;
    }
    headers.remove(&PEER_METADATA_ID);
    if let Some(value) = headers.remove(&PEER_METADATA) {
        t.set_peer(value.as_bytes());
    }
}

/// Respond: the destination answers a caller that sent its metadata with its own; a gRPC
/// status sent in the head (trailers-only) is noted.
pub(crate) fn on_respond(headers: &mut HeaderMap, t: &mut RequestTelemetry) {
    if t.reporter().is_none() {
        return;
    }
    t.note_grpc_status(headers);
    if t.asked
        && let Some(local) = t.local_headers()
    {
        local.insert_into(headers);
    }
}
