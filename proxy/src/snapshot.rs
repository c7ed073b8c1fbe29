//! A snapshot: the bootstrap compiled into what workers use (clusters, route tables).
//! Workers read the current snapshot without locks; a reload swaps in a new one.

use std::collections::HashMap;
use std::sync::Arc;

use crate::config::Bootstrap;
use crate::route::RouteTable;
use crate::upstream::Cluster;

pub struct Snapshot {
    pub version: u64,
    pub bootstrap: Bootstrap,
    /// Clusters in config order.
    pub clusters: Vec<Arc<Cluster>>,
    /// Route table of each listener, in config order.
    pub routes: Vec<RouteTable>,
}

impl Snapshot {
    pub fn build(bootstrap: Bootstrap, version: u64, workers: usize) -> Result<Snapshot, String> {
        let clusters = bootstrap
            .clusters
            .iter()
            .map(|c| Cluster::new(c, workers).map(Arc::new))
            .collect::<Result<Vec<_>, _>>()?;
        let by_name: HashMap<String, Arc<Cluster>> = clusters
            .iter()
            .map(|c| (c.name.clone(), c.clone()))
            .collect();
        let routes = bootstrap
            .listeners
            .iter()
            .map(|l| RouteTable::new(&l.virtual_hosts, &by_name))
            .collect();
        Ok(Snapshot {
            version,
            bootstrap,
            clusters,
            routes,
        })
    }
}
