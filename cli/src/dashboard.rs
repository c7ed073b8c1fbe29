//! `wasmesh dashboard`: the control plane's live service graph, in a browser.
//!
//! The control plane says where it serves the dashboard (`MeshAdmin.Dashboard`, the address
//! its `--dashboard` flag bound); the URL is printed, and opened with `xdg-open` where there
//! is a display to open it on.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;

use anyhow::Context;
use wasmesh_api as api;

/// The dashboard's URL: from `address` (`host:port` or a URL) if given, else asked of the
/// control plane at `control_plane`.
pub async fn url(control_plane: &str, address: Option<&str>) -> anyhow::Result<String> {
    if let Some(address) = address {
        return Ok(if address.contains("://") {
            address.to_owned()
        } else {
            format!("http://{address}/")
        });
    }
    let mut admin =
        api::mesh_admin_client::MeshAdminClient::new(crate::mesh::channel(control_plane).await?);
    let reply = admin
        .dashboard(api::DashboardRequest {})
        .await
        .map_err(|s| anyhow::anyhow!("dashboard: {}", s.message()))?
        .into_inner();
    if reply.address.is_empty() {
        anyhow::bail!(
            "the control plane at {control_plane} serves no dashboard: start it with \
             --dashboard 127.0.0.1:15014"
        );
    }
    let bound: SocketAddr = reply
        .address
        .parse()
        .with_context(|| format!("the control plane names {:?}", reply.address))?;
    Ok(format!("http://{}/", reachable(bound, control_plane)))
}

/// `bound` as this machine reaches it: a dashboard bound to every address is reached at the
/// host the control plane was reached at.
fn reachable(bound: SocketAddr, control_plane: &str) -> String {
    if !bound.ip().is_unspecified() {
        return bound.to_string();
    }
    let authority = control_plane
        .split_once("://")
        .map_or(control_plane, |(_, rest)| rest)
        .trim_end_matches('/');
    let host = match authority.parse::<SocketAddr>() {
        Ok(a) => a.ip().to_string(),
        Err(_) => authority
            .rsplit_once(':')
            .map_or(authority, |(host, _)| host)
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned(),
    };
    match host.parse::<IpAddr>() {
        Ok(ip) => SocketAddr::new(ip, bound.port()).to_string(),
        Err(_) => format!("{host}:{}", bound.port()),
    }
}

/// How the page can be opened here: `xdg-open`, where there is a display for a browser.
pub fn opener() -> Option<PathBuf> {
    let display = ["DISPLAY", "WAYLAND_DISPLAY"]
        .iter()
        .any(|v| std::env::var_os(v).is_some_and(|d| !d.is_empty()));
    if !display {
        return None;
    }
    std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .map(|dir| dir.join("xdg-open"))
        .find(|p| p.is_file())
}

/// Opens `url` with `opener` in the background.
pub fn open(opener: &std::path::Path, url: &str) -> anyhow::Result<()> {
    std::process::Command::new(opener)
        .arg(url)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .with_context(|| format!("{} {url}", opener.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_dashboard_on_every_address_is_reached_where_the_control_plane_was() {
        let any: SocketAddr = "0.0.0.0:15014".parse().unwrap();
        assert_eq!(reachable(any, "127.0.0.1:15010"), "127.0.0.1:15014");
        assert_eq!(reachable(any, "http://10.1.2.3:15010"), "10.1.2.3:15014");
        assert_eq!(reachable(any, "[::1]:15010"), "[::1]:15014");
        assert_eq!(
            reachable(any, "wasmesh-controlplane.wasmesh-system.svc:15010"),
            "wasmesh-controlplane.wasmesh-system.svc:15014"
        );
        let bound: SocketAddr = "127.0.0.1:40001".parse().unwrap();
        assert_eq!(reachable(bound, "10.1.2.3:15010"), "127.0.0.1:40001");
    }
}
