//! A snapshot: the bootstrap compiled into what workers use (clusters, route tables, plugin
//! chains). Workers read the current snapshot without locks; a reload swaps in a new one.

use std::collections::HashMap;
use std::sync::Arc;

use wasmesh_host::{Host, PluginSpec};

use crate::config::{Bootstrap, ConfigError};
use crate::route::RouteTable;
use crate::upstream::Cluster;

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
}

impl Snapshot {
    /// Compiles a bootstrap: resolves endpoints, loads and checks every plugin (each chain is
    /// started once, so a plugin that refuses its configuration is reported here). Errors
    /// name the field (the caller names the file).
    pub fn build(
        bootstrap: Bootstrap,
        version: u64,
        workers: usize,
        host: &Arc<Host>,
    ) -> Result<Snapshot, ConfigError> {
        let clusters = bootstrap
            .clusters
            .iter()
            .enumerate()
            .map(|(i, c)| {
                Cluster::new(c, workers)
                    .map(Arc::new)
                    .map_err(|reason| ConfigError::at(format!("clusters[{i}]"), reason))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let by_name: HashMap<String, usize> = clusters
            .iter()
            .enumerate()
            .map(|(i, c)| (c.name.clone(), i))
            .collect();
        let named: HashMap<String, Arc<Cluster>> = clusters
            .iter()
            .map(|c| (c.name.clone(), c.clone()))
            .collect();
        let routes = bootstrap
            .listeners
            .iter()
            .map(|l| RouteTable::new(&l.virtual_hosts, &named))
            .collect();
        let mut chains = Vec::with_capacity(bootstrap.listeners.len());
        for (i, l) in bootstrap.listeners.iter().enumerate() {
            let specs =
                crate::plugins::load_chain(host, &l.http_filters, bootstrap.base_dir.as_deref())
                    .map_err(|e| e.at_listener(i))?;
            crate::plugins::validate(host, &l.http_filters, &specs).map_err(|e| e.at_listener(i))?;
            chains.push(specs);
        }
        Ok(Snapshot {
            version,
            bootstrap,
            clusters,
            by_name,
            routes,
            chains,
        })
    }

    pub fn cluster(&self, name: &str) -> Option<&Arc<Cluster>> {
        self.by_name.get(name).map(|&i| &self.clusters[i])
    }
}
