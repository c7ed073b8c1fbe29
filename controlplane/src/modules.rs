//! The Wasm modules the control plane ships: read from files, kept by sha256 for proxies'
//! `GetModule`, and remembered per WasmPlugin so a module that goes bad keeps the last good.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use sha2::{Digest, Sha256};

/// Modules by sha256 (hex).
#[derive(Default)]
pub struct ModuleStore {
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    by_sha: HashMap<String, Arc<[u8]>>,
    /// What each file held when last read: (modified, length) -> sha256, so unchanged files
    /// are not hashed again.
    files: HashMap<PathBuf, (SystemTime, u64, String)>,
}

impl ModuleStore {
    /// Reads the module at `path` (unless unchanged since last read) and returns its sha256,
    /// checked against `expected` when given. `Err` is the reason, naming the file.
    pub fn add_file(&self, path: &Path, expected: Option<&str>) -> Result<String, String> {
        let meta = std::fs::metadata(path).map_err(|e| format!("{}: {e}", path.display()))?;
        let stamp = (
            meta.modified().unwrap_or(SystemTime::UNIX_EPOCH),
            meta.len(),
        );
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let known = inner
            .files
            .get(path)
            .filter(|(m, l, _)| (*m, *l) == stamp)
            .map(|(_, _, sha)| sha.clone());
        let sha = match known {
            Some(sha) => sha,
            None => {
                let bytes = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
                let sha = hex(&Sha256::digest(&bytes));
                inner.by_sha.insert(sha.clone(), bytes.into());
                inner
                    .files
                    .insert(path.to_owned(), (stamp.0, stamp.1, sha.clone()));
                sha
            }
        };
        if let Some(expected) = expected
            && !expected.eq_ignore_ascii_case(&sha)
        {
            return Err(format!(
                "{}: sha256 mismatch: expected {expected}, got {sha}",
                path.display()
            ));
        }
        Ok(sha)
    }

    /// Keeps a module already hashed (a pulled one).
    pub fn add(&self, sha256: &str, bytes: Arc<[u8]>) {
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        inner.by_sha.entry(sha256.to_owned()).or_insert(bytes);
    }

    pub fn get(&self, sha256: &str) -> Option<Arc<[u8]>> {
        let inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        inner.by_sha.get(sha256).cloned()
    }

    /// Forgets modules no longer in `used`.
    pub fn retain(&self, used: &std::collections::HashSet<String>) {
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        inner.by_sha.retain(|sha, _| used.contains(sha));
        inner.files.retain(|_, (_, _, sha)| used.contains(sha));
    }
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
