//! Respond: the response (the upstream's or a local reply) goes back through the filters, last
//! filter first, and gets the listener's `server` header.

use http::Response;
use http::header::{self, HeaderMap};

use super::context::Exchange;
use super::filters::{Filters, StreamReset};
use crate::body::ProxyBody;
use crate::config::ServerHeaderTransformation;
use crate::conn::ConnCtx;

/// Works on the response in place: moving a response into and out of a future costs a copy
/// of its head, which every request would pay.
pub(super) async fn respond(
    response: &mut Response<ProxyBody>,
    conn: &ConnCtx,
    filters: Option<&Filters>,
    ex: &mut Exchange,
) -> Result<(), StreamReset> {
    if let Some(filters) = filters {
        // Boxed: only filtered requests pay for the response filters' state.
        let given = std::mem::take(response);
        *response = Box::pin(filters.on_response(given, ex)).await?;
    }
    set_server_header(response.headers_mut(), conn);
    crate::telemetry::peer::on_respond(response.headers_mut(), &mut ex.istio);
    Ok(())
}

/// Envoy's `server_header_transformation`, on every response the client gets.
pub(super) fn set_server_header(headers: &mut HeaderMap, conn: &ConnCtx) {
    match conn.opts.server_header_transformation {
        ServerHeaderTransformation::Overwrite => {
            headers.insert(header::SERVER, conn.server_name.clone());
        }
        ServerHeaderTransformation::AppendIfAbsent => {
            if !headers.contains_key(header::SERVER) {
                headers.insert(header::SERVER, conn.server_name.clone());
            }
        }
        ServerHeaderTransformation::PassThrough => {}
    }
}
