//! Where the configuration comes from once the proxy runs, and how a new one takes effect.
//! Today's sources are the bootstrap file (SIGHUP, `POST /config_reload`, the file watch) and
//! a bootstrap value handed to `Proxy::reload`; the control plane's stream is the next. Every
//! source ends in [`ConfigSource::apply`]: checked against what needs a restart, compiled with
//! its plugins started, made current, counted, and its error kept for `/server_info`.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};

use crate::config::{Bootstrap, ConfigError};
use crate::snapshot::Snapshot;
use crate::worker::Shared;

/// Why a reload was refused. The config in effect keeps serving.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ReloadError {
    /// The file could not be read or parsed, the config is invalid or changes what needs a
    /// restart (`listeners`, `workers`), or a plugin could not be loaded or started: the
    /// error names the file (for reloads of a file), the field and the reason.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// A reload from a file was asked of a proxy started from a bootstrap value.
    #[error("the proxy was not started from a file")]
    NoFile,
}

/// The proxy's configuration source and its reload record.
pub struct ConfigSource {
    shared: Arc<Shared>,
    /// The file the bootstrap came from, for reloads.
    file: Option<PathBuf>,
    /// The file's text as last loaded (at start or by a reload).
    loaded_text: Mutex<Option<String>>,
    /// One reload at a time.
    one_at_a_time: Mutex<()>,
    /// Reloads that took effect, and those refused (`wasmesh_config_reloads_total`).
    pub reloads_ok: AtomicU64,
    pub reloads_failed: AtomicU64,
    /// Why the last reload was refused, until one succeeds (`/server_info`).
    last_error: Mutex<Option<ReloadError>>,
}

impl ConfigSource {
    /// A source for a proxy started from `file` (whose text was `text`), or from a value.
    pub fn new(shared: Arc<Shared>, file: Option<(PathBuf, String)>) -> ConfigSource {
        let (file, text) = file.unzip();
        ConfigSource {
            shared,
            file,
            loaded_text: Mutex::new(text),
            one_at_a_time: Mutex::new(()),
            reloads_ok: AtomicU64::new(0),
            reloads_failed: AtomicU64::new(0),
            last_error: Mutex::new(None),
        }
    }

    /// Applies a new bootstrap atomically: it is compiled and its plugins started first, and
    /// only then made current. New requests use it; requests in flight finish on the old one
    /// (with their plugin instances). On any error nothing changes. Listeners, workers, the
    /// admin address and the access log need a restart. The outcome is recorded.
    pub fn reload(&self, bootstrap: Bootstrap) -> Result<u64, ReloadError> {
        let _one = lock(&self.one_at_a_time);
        let result = self.apply(bootstrap, None);
        self.record(result.as_ref().map(|v| Some(*v)));
        result
    }

    /// Reloads from the file the bootstrap came from (SIGHUP, `POST /config_reload`).
    pub fn reload_file(&self) -> Result<u64, ReloadError> {
        self.reload_file_when(true)
            .map(|v| v.expect("a forced reload happens"))
    }

    /// Reloads from the file unless its text is what was last loaded from it (`None`): a
    /// watcher seeing a new modification time after an admin reload must not redo it.
    pub fn reload_file_if_changed(&self) -> Result<Option<u64>, ReloadError> {
        self.reload_file_when(false)
    }

    /// Whether the proxy is draining: sources stop following their origin.
    pub fn is_draining(&self) -> bool {
        self.shared.is_draining()
    }

    /// Why the last reload was refused, until one succeeds.
    pub fn last_error(&self) -> Option<ReloadError> {
        lock(&self.last_error).clone()
    }

    fn reload_file_when(&self, force: bool) -> Result<Option<u64>, ReloadError> {
        let _one = lock(&self.one_at_a_time);
        let result = self.read_and_apply(force);
        self.record(result.as_ref().copied());
        result
    }

    fn read_and_apply(&self, force: bool) -> Result<Option<u64>, ReloadError> {
        let path = self.file.as_deref().ok_or(ReloadError::NoFile)?;
        let text = Bootstrap::read(path)?;
        let mut loaded = lock(&self.loaded_text);
        if !force && loaded.as_deref() == Some(text.as_str()) {
            return Ok(None);
        }
        let bootstrap = Bootstrap::from_file_text(path, &text)?;
        let version = self.apply(bootstrap, Some(path))?;
        *loaded = Some(text);
        Ok(Some(version))
    }

    /// Compiles modules no filter uses yet (`(path, sha256)`), into the host's cache (and its
    /// disk cache), so that a config that starts using one loads it at once. A module that
    /// fails is only logged: a config that uses it will report why.
    pub fn warm(&self, modules: &[(std::path::PathBuf, String)]) {
        let cache = &self.shared.host.cache;
        for (path, sha256) in modules {
            if cache.get(sha256).is_some() {
                continue;
            }
            let loaded = std::fs::read(path)
                .map_err(|e| e.to_string())
                .and_then(|bytes| cache.load(&bytes, Some(sha256)).map_err(|e| e.to_string()));
            match loaded {
                Ok(_) => tracing::debug!(module = %sha256, "module compiled ahead of use"),
                Err(error) => {
                    tracing::warn!(module = %sha256, %error, "cannot compile a module ahead of use")
                }
            }
        }
    }

    /// Every source's bootstrap takes effect here, or is refused with nothing changed.
    fn apply(&self, bootstrap: Bootstrap, file: Option<&Path>) -> Result<u64, ReloadError> {
        let in_file = |e: ConfigError| ReloadError::Config(e.in_file(file));
        let current = self.shared.snapshot();
        needs_no_restart(&current.bootstrap, &bootstrap, self.shared.workers).map_err(in_file)?;
        let version = current.version + 1;
        let snapshot = Snapshot::build(
            bootstrap,
            version,
            self.shared.workers,
            &self.shared.host,
            &self.shared.identity,
            Some(&current),
        )
        .map_err(|e| in_file(e.into()))?;
        self.shared.install(snapshot);
        Ok(version)
    }

    /// Every reload, whatever asked for it, ends here: counted, and its error kept for
    /// `/server_info` (a success clears it). `Ok(None)` is a file found unchanged: not a
    /// reload, but the file on disk is the config in effect again, so an error about an
    /// earlier text of it no longer holds.
    fn record(&self, outcome: Result<Option<u64>, &ReloadError>) {
        let mut last = lock(&self.last_error);
        match outcome {
            Ok(Some(version)) => {
                self.reloads_ok.fetch_add(1, Relaxed);
                *last = None;
                tracing::info!(version, "configuration reloaded");
            }
            Ok(None) => *last = None,
            Err(e) => {
                self.reloads_failed.fetch_add(1, Relaxed);
                *last = Some(e.clone());
                tracing::warn!(error = %e, "configuration rejected; the last good one keeps serving");
            }
        }
    }
}

/// Refuses a change a running proxy cannot take: its listeners (names, addresses, count)
/// and its worker count are fixed at start.
fn needs_no_restart(old: &Bootstrap, new: &Bootstrap, workers: usize) -> Result<(), ConfigError> {
    for (i, (was, now)) in old.listeners.iter().zip(&new.listeners).enumerate() {
        for (field, was, now) in [
            ("name", &was.name, &now.name),
            ("address", &was.address, &now.address),
        ] {
            if was != now {
                return Err(ConfigError::at(
                    format!("listeners[{i}].{field}"),
                    format!("changed from {was:?} to {now:?}: listeners need a restart"),
                ));
            }
        }
    }
    if old.listeners.len() != new.listeners.len() {
        return Err(ConfigError::at(
            "listeners",
            format!(
                "{} listeners instead of {}: listeners need a restart",
                new.listeners.len(),
                old.listeners.len()
            ),
        ));
    }
    if new.worker_count() != workers {
        return Err(ConfigError::at(
            "workers",
            format!(
                "changed from {workers} to {}: the worker count needs a restart",
                new.worker_count()
            ),
        ));
    }
    Ok(())
}

/// A poisoned lock still guards consistent data here: every critical section is a
/// replacement.
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}
