//! Where the mesh's resources come from. Every source yields the same thing, a [`Loaded`]
//! (resources and what was wrong with the rest), through a watch channel; the server does not
//! know which source it has. The embedded default is a watched directory of Istio YAML; the
//! Kubernetes source is to yield the same.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use notify::{RecursiveMode, Watcher};
use tokio::sync::watch;

use crate::diag::{Diagnostic, code};
use crate::manifests::{self, Loaded, Resource};

/// What a source yields, numbered: each new value replaces the last.
#[derive(Clone, Debug, Default)]
pub struct SourceState {
    pub generation: u64,
    pub loaded: Loaded,
}

/// A directory of manifests, read again whenever a file in it changes.
pub struct DirectorySource {
    pub rx: watch::Receiver<Arc<SourceState>>,
    _watcher: notify::RecommendedWatcher,
}

/// How long to wait for more events after one, so an editor's save (write, rename, chmod) is
/// read once.
const SETTLE: Duration = Duration::from_millis(10);

impl DirectorySource {
    /// Reads `dir` and watches it. `Err` when it cannot be read or watched.
    pub fn start(dir: &Path) -> Result<DirectorySource, String> {
        let dir = dir.to_owned();
        let mut keeper = LastGood::default();
        let first = read(&dir, &mut keeper)?;
        let (tx, rx) = watch::channel(Arc::new(SourceState {
            generation: 1,
            loaded: first,
        }));
        let (events_tx, events_rx) = std::sync::mpsc::channel::<()>();
        let mut watcher =
            notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
                if event.is_ok_and(|e| !e.kind.is_access()) {
                    let _ = events_tx.send(());
                }
            })
            .map_err(|e| format!("{}: cannot watch: {e}", dir.display()))?;
        watcher
            .watch(&dir, RecursiveMode::NonRecursive)
            .map_err(|e| format!("{}: cannot watch: {e}", dir.display()))?;
        std::thread::Builder::new()
            .name("wasmesh-source".into())
            .spawn(move || {
                let mut generation = 1;
                while events_rx.recv().is_ok() {
                    while events_rx.recv_timeout(SETTLE).is_ok() {}
                    match read(&dir, &mut keeper) {
                        Ok(loaded) => {
                            generation += 1;
                            if tx
                                .send(Arc::new(SourceState { generation, loaded }))
                                .is_err()
                            {
                                return;
                            }
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, "manifests not read; the last ones stay")
                        }
                    }
                }
            })
            .map_err(|e| format!("cannot start the source thread: {e}"))?;
        Ok(DirectorySource {
            rx,
            _watcher: watcher,
        })
    }
}

fn read(dir: &Path, keeper: &mut LastGood) -> Result<Loaded, String> {
    let loaded = manifests::load_dir(dir).map_err(|e| e.to_string())?;
    Ok(keeper.apply(loaded))
}

/// Keeps the last good version of each resource whose new version is broken: a document that
/// no longer parses, a resource that no longer validates, or a Telemetry that names a provider
/// the mesh config lacks, is reported and its previous version stays in effect. A resource
/// removed from the files is removed.
#[derive(Default)]
pub struct LastGood {
    good: BTreeMap<Key, Resource>,
}

/// Group (Istio's and the Gateway API's `Gateway` differ), kind, namespace, name.
type Key = (String, String, String, String);

fn key(r: &Resource) -> Key {
    (
        r.group().to_owned(),
        r.kind().to_owned(),
        r.namespace().to_owned(),
        r.name().to_owned(),
    )
}

impl LastGood {
    pub fn apply(&mut self, mut loaded: Loaded) -> Loaded {
        let mut good = BTreeMap::new();
        let mut kept = Vec::new();
        // Resources that parse but no longer validate.
        for r in &mut loaded.resources {
            let k = key(r);
            let found = crate::translate::check(r);
            let bad = found.iter().any(Diagnostic::is_error);
            match (bad, self.good.get(&k)) {
                (false, _) => {
                    good.insert(k, r.clone());
                }
                (true, Some(last)) => {
                    // What is wrong with the new version (the translation sees the old one).
                    kept.extend(found.into_iter().filter(Diagnostic::is_error));
                    kept.push(last.diag(Diagnostic::warning(
                        code::NOTE,
                        "this resource has errors: its last good version stays in effect",
                    )));
                    *r = last.clone();
                    good.insert(k, last.clone());
                }
                (true, None) => {}
            }
        }
        // Documents that no longer parse, as far as they name a resource.
        for d in &loaded.diagnostics {
            let (true, Some(kind), Some(name)) = (d.is_error(), &d.kind, &d.name) else {
                continue;
            };
            let namespace = d.namespace.as_deref().unwrap_or("default");
            // A diagnostic names no group: the last good resource of that kind and name, of
            // any group, not good now.
            let last = self.good.iter().find(|(k, _)| {
                k.1 == *kind && k.2 == namespace && k.3 == *name && !good.contains_key(*k)
            });
            let Some((k, last)) = last.map(|(k, r)| (k.clone(), r.clone())) else {
                continue;
            };
            kept.push(last.diag(Diagnostic::warning(
                code::NOTE,
                "this resource has errors: its last good version stays in effect",
            )));
            loaded.resources.push(last.clone());
            good.insert(k, last);
        }
        // Telemetries that name a provider the mesh config (as now in effect) lacks.
        for (i, errors) in crate::telemetry::unresolved(&loaded.resources) {
            let r = &loaded.resources[i];
            let k = key(r);
            let last = self
                .good
                .get(&k)
                .filter(|last| crate::telemetry::resolves(&loaded.resources, last))
                .cloned();
            match last {
                Some(last) => {
                    kept.extend(errors);
                    kept.push(last.diag(Diagnostic::warning(
                        code::NOTE,
                        "this resource has errors: its last good version stays in effect",
                    )));
                    loaded.resources[i] = last.clone();
                    good.insert(k, last);
                }
                None => {
                    good.remove(&k);
                }
            }
        }
        loaded.diagnostics.extend(kept);
        self.good = good;
        loaded
    }
}

/// The directory's path as the control plane logs it.
pub fn describe(dir: &Path) -> PathBuf {
    std::path::absolute(dir).unwrap_or_else(|_| dir.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    const VS: &str = "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: r}\nspec:\n  hosts: [reviews]\n  http:\n  - route:\n    - destination: {host: reviews}\n";

    #[test]
    fn a_broken_resource_keeps_its_last_good_version() {
        let mut keeper = LastGood::default();
        let first = keeper.apply(manifests::parse_str(VS, None));
        assert_eq!(first.resources.len(), 1);

        // A typo in a field name: the document is refused and the old version stays.
        let broken = VS.replace("route:", "rout:");
        let second = keeper.apply(manifests::parse_str(&broken, None));
        assert_eq!(second.resources, first.resources);
        assert!(second.diagnostics.iter().any(|d| d.is_error()));
        assert!(
            second
                .diagnostics
                .iter()
                .any(|d| d.to_string().contains("last good version"))
        );

        // A field that no longer validates: its error is reported, with the field.
        let invalid = VS.replace("hosts: [reviews]", "hosts: []");
        let third = keeper.apply(manifests::parse_str(&invalid, None));
        assert_eq!(third.resources, first.resources);
        assert!(
            third
                .diagnostics
                .iter()
                .any(|d| d.is_error() && d.field.as_deref() == Some("spec.hosts")),
            "{:#?}",
            third.diagnostics
        );

        // Removed from the files: gone.
        let gone = keeper.apply(manifests::parse_str("", None));
        assert!(gone.resources.is_empty());
    }
}
