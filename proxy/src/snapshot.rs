//! A snapshot: the bootstrap compiled into what workers use (clusters, route tables, plugin
//! chains). Workers read the current snapshot without locks; a reload swaps in a new one.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use wasmesh_host::{Host, PluginSpec};

use crate::config::{Bootstrap, ConfigError};
use crate::gateway_tls::{Gateway, GatewayTlsError};
use crate::identity::Identity;
use crate::plugins::{self, FilterError};
use crate::route::RouteTable;
use crate::tls::ClientTls;
use crate::upstream::Cluster;

/// Why a bootstrap could not be compiled into a snapshot. It becomes a [`ConfigError`] whose
/// field path names the cluster, or the listener's filter and its field.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    /// Endpoint `endpoint` of cluster `cluster` (in config order) does not resolve.
    #[error("clusters[{cluster}].endpoints[{endpoint}]: {error}")]
    Endpoint {
        cluster: usize,
        endpoint: usize,
        error: crate::config::EndpointError,
    },
    /// The TLS settings of cluster `cluster` are unusable.
    #[error("clusters[{cluster}].tls: {error}")]
    Tls { cluster: usize, error: String },
    /// A filter of listener `listener` could not be loaded or refused to start.
    #[error("listeners[{listener}]: {error}")]
    Filter { listener: usize, error: FilterError },
    /// The gateway TLS of listener `listener` is unusable (a file unreadable, a key that is
    /// not its certificate's).
    #[error("listeners[{listener}].{error}")]
    ListenerTls {
        listener: usize,
        error: GatewayTlsError,
    },
}

impl From<SnapshotError> for ConfigError {
    fn from(e: SnapshotError) -> ConfigError {
        match e {
            SnapshotError::Endpoint {
                cluster,
                endpoint,
                error,
            } => ConfigError::at(
                format!("clusters[{cluster}].endpoints[{endpoint}]"),
                error.to_string(),
            ),
            SnapshotError::Tls { cluster, error } => {
                ConfigError::at(format!("clusters[{cluster}].tls"), error)
            }
            SnapshotError::Filter { listener, error } => error.at_listener(listener),
            SnapshotError::ListenerTls { listener, error } => ConfigError::at(
                format!("listeners[{listener}].tls.{}", error.field),
                error.reason,
            ),
        }
    }
}

pub struct Snapshot {
    pub version: u64,
    pub bootstrap: Bootstrap,
    /// Clusters in config order.
    pub clusters: Vec<Arc<Cluster>>,
    by_name: HashMap<String, usize>,
    /// Route table of each listener, in config order.
    pub routes: Vec<RouteTable>,
    /// Plugin chain of each listener, in the order plugins run.
    pub chains: Vec<Vec<Arc<PluginSpec>>>,
    /// Tracing, when configured (`telemetry.tracing`).
    pub trace: Option<crate::telemetry::trace::Settings>,
    /// For each `original_dst` listener (empty for the others): which listener (by index)
    /// handles each original destination.
    handoff: Vec<HashMap<SocketAddr, usize>>,
    /// For each listener with `simple`/`mutual` TLS or `sni_routes` (`None` for the others):
    /// its certificates and SNI routes, compiled once per snapshot.
    pub gateways: Vec<Option<Arc<Gateway>>>,
}

impl Snapshot {
    /// Compiles a bootstrap: resolves endpoints, loads and checks every plugin (each chain is
    /// started once, so a plugin that refuses its configuration is reported here). Errors
    /// name what is at fault; as a [`ConfigError`] the field (the caller names the file).
    ///
    /// What `running` (the snapshot in effect) already has, configured the same, is kept
    /// rather than made again, as Envoy keeps unchanged clusters and plugins across updates:
    /// a cluster keeps its pools, circuit-breaker and outlier state and counters; a plugin
    /// keeps its VMs (and the state in them) and is not started again to check it.
    pub fn build(
        bootstrap: Bootstrap,
        version: u64,
        workers: usize,
        host: &Arc<Host>,
        identity: &Arc<Identity>,
        running: Option<&Snapshot>,
    ) -> Result<Snapshot, SnapshotError> {
        let clusters = bootstrap
            .clusters
            .iter()
            .enumerate()
            .map(|(i, c)| {
                if let Some(kept) = running
                    .and_then(|r| r.cluster(&c.name))
                    .filter(|k| k.config == *c)
                {
                    return Ok(kept.clone());
                }
                let tls = c
                    .tls
                    .as_ref()
                    .map(|t| ClientTls::new(identity.clone(), t, &c.name, c.protocol))
                    .transpose()
                    .map_err(|error| SnapshotError::Tls { cluster: i, error })?;
                Cluster::new(c, workers, tls)
                    .map(Arc::new)
                    .map_err(|(endpoint, error)| SnapshotError::Endpoint {
                        cluster: i,
                        endpoint,
                        error,
                    })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let by_name: HashMap<String, usize> = clusters
            .iter()
            .enumerate()
            .map(|(i, c)| (c.name.to_string(), i))
            .collect();
        let named: HashMap<String, Arc<Cluster>> = clusters
            .iter()
            .map(|c| (c.name.to_string(), c.clone()))
            .collect();
        let routes = bootstrap
            .listeners
            .iter()
            .map(|l| RouteTable::new(&l.virtual_hosts, &named))
            .collect();
        let mut chains = Vec::with_capacity(bootstrap.listeners.len());
        for (i, l) in bootstrap.listeners.iter().enumerate() {
            let in_listener = |error| SnapshotError::Filter { listener: i, error };
            let mut specs =
                plugins::load_chain(host, &l.http_filters, bootstrap.base_dir.as_deref())
                    .map_err(in_listener)?;
            let running_chain = running
                .and_then(|r| r.chains.get(i))
                .map_or(&[][..], Vec::as_slice);
            let fresh = plugins::keep_unchanged(&mut specs, running_chain);
            plugins::validate(host, &l.http_filters, &fresh).map_err(in_listener)?;
            chains.push(specs);
        }
        let gateways = bootstrap
            .listeners
            .iter()
            .enumerate()
            .map(|(i, l)| {
                Gateway::new(l, bootstrap.base_dir.as_deref())
                    .map(|g| g.map(Arc::new))
                    .map_err(|error| SnapshotError::ListenerTls { listener: i, error })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let handoff = bootstrap
            .listeners
            .iter()
            .map(|l| {
                let Some(od) = &l.original_dst else {
                    return HashMap::new();
                };
                let mut map = HashMap::new();
                for (i, target) in bootstrap.listeners.iter().enumerate() {
                    if od.listeners.contains(&target.name) {
                        // Validated: every entry is an ip:port.
                        map.extend(
                            target
                                .handles
                                .iter()
                                .filter_map(|h| Some((h.parse().ok()?, i))),
                        );
                    }
                }
                map
            })
            .collect();
        Ok(Snapshot {
            version,
            trace: crate::telemetry::trace::Settings::new(&bootstrap),
            bootstrap,
            clusters,
            by_name,
            routes,
            chains,
            handoff,
            gateways,
        })
    }

    pub fn cluster(&self, name: &str) -> Option<&Arc<Cluster>> {
        self.by_name.get(name).map(|&i| &self.clusters[i])
    }

    /// The listener that serves a connection `listener` (an `original_dst` one) accepted for
    /// `destination`: the one handling that exact address, else that port on any address.
    pub fn handler(&self, listener: usize, destination: SocketAddr) -> Option<usize> {
        let map = self.handoff.get(listener)?;
        map.get(&destination).copied().or_else(|| {
            let any = match destination {
                SocketAddr::V4(_) => std::net::Ipv4Addr::UNSPECIFIED.into(),
                SocketAddr::V6(_) => std::net::Ipv6Addr::UNSPECIFIED.into(),
            };
            map.get(&SocketAddr::new(any, destination.port())).copied()
        })
    }
}
