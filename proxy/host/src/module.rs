//! Plugin modules: checked, compiled once, cached by sha256 in memory and on disk.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::Ordering::SeqCst;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use sha2::{Digest, Sha256};
use wasmtime::{
    Config, Engine, InstanceAllocationStrategy, Module, OptLevel, PoolingAllocationConfig,
};

use crate::abi::AbiVersion;

/// The largest linear memory any plugin VM may have; per-plugin caps are lower.
pub const MAX_MEMORY: usize = 256 << 20;
/// How often the epoch advances: the granularity of guest call deadlines.
pub const EPOCH_TICK: Duration = Duration::from_millis(2);

/// Why a module was refused.
#[derive(Debug, thiserror::Error)]
pub enum ModuleError {
    #[error("not a WebAssembly module (no \\0asm header)")]
    NotWasm,
    #[error("sha256 mismatch: expected {expected}, got {actual}")]
    Sha256Mismatch { expected: String, actual: String },
    #[error("invalid module: {0}")]
    Compile(String),
    #[error(
        "missing or unknown proxy-wasm ABI version: export proxy_abi_version_0_2_1 (or _0_2_0)"
    )]
    UnknownAbi,
    #[error("proxy-wasm ABI 0.1.0 is not supported: rebuild with proxy-wasm 0.2 or later")]
    Abi010,
    #[error("missing export `{0}`")]
    MissingExport(&'static str),
    #[error("imports unknown host function `{0}`")]
    UnknownImport(String),
}

/// A compiled plugin module.
pub struct PluginModule {
    pub sha256: [u8; 32],
    pub module: Module,
    pub abi: AbiVersion,
}

impl PluginModule {
    pub fn sha256_hex(&self) -> String {
        hex(&self.sha256)
    }
}

impl std::fmt::Debug for PluginModule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PluginModule")
            .field("sha256", &self.sha256_hex())
            .field("abi", &self.abi)
            .finish()
    }
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The hex sha256 of `bytes`.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
}

/// The process-wide engine: one per process, because the pooling allocator reserves address
/// space for every VM slot up front. A thread advances its epoch for guest call deadlines.
pub fn engine() -> &'static Engine {
    static ENGINE: OnceLock<Engine> = OnceLock::new();
    ENGINE.get_or_init(|| {
        let mut pool = PoolingAllocationConfig::default();
        pool.total_memories(1000)
            .total_core_instances(1000)
            .total_tables(1000)
            .max_memory_size(MAX_MEMORY)
            .table_elements(100_000)
            .max_core_instance_size(1 << 20);
        let mut config = Config::new();
        config
            .epoch_interruption(true)
            .cranelift_opt_level(OptLevel::Speed)
            .allocation_strategy(InstanceAllocationStrategy::Pooling(pool))
            // Bounds-checked memories sized to the cap, not 4 GiB reservations per slot.
            .memory_reservation(MAX_MEMORY as u64)
            .memory_guard_size(64 << 10)
            .memory_reservation_for_growth(0)
            .max_wasm_stack(1 << 20);
        let engine = Engine::new(&config).expect("a wasmtime engine");
        let ticker = engine.weak();
        let thread = std::thread::Builder::new()
            .name("wasmesh-wasm-epoch".into())
            .spawn(move || {
                let mut idle = 0;
                while let Some(engine) = ticker.upgrade() {
                    engine.increment_epoch();
                    drop(engine);
                    std::thread::sleep(EPOCH_TICK);
                    idle = if epoch::IN_FLIGHT.load(SeqCst) == 0 {
                        idle + 1
                    } else {
                        0
                    };
                    if idle >= epoch::IDLE_TICKS {
                        epoch::park();
                        idle = 0;
                    }
                }
            })
            .expect("the epoch thread");
        let _ = epoch::TICKER.set(thread.thread().clone());
        engine
    })
}

/// The epoch thread runs only while guest code may: it parks after [`epoch::IDLE_TICKS`]
/// ticks with no guest call in flight, and the next call wakes it. An idle proxy wakes no
/// thread (500 wake-ups a second per sidecar otherwise). A call in flight always has the
/// ticker running, so its deadline holds.
pub(crate) mod epoch {
    use std::sync::OnceLock;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::SeqCst};

    /// Guest calls running now, on every thread.
    pub static IN_FLIGHT: AtomicUsize = AtomicUsize::new(0);
    static PARKED: AtomicBool = AtomicBool::new(false);
    pub static TICKER: OnceLock<std::thread::Thread> = OnceLock::new();
    /// 5 ticks of 2 ms: parks after 10 ms without guest code. Under steady traffic calls
    /// come closer than that and the ticker never parks; between sparse calls (a sidecar's
    /// config reloads, light traffic) a wake-up per call costs less than ticking through the
    /// gaps (with 100 sidecars reloading every ~100 ms, a 100 ms idle window kept all their
    /// tickers running: 50,000 wake-ups a second).
    pub const IDLE_TICKS: u32 = 5;

    /// Parks the ticker until a call starts. Each side writes its flag, then reads the
    /// other's (sequentially consistent): a call starting meanwhile either sees the ticker
    /// parked and wakes it, or is seen by it and keeps it running.
    pub fn park() {
        PARKED.store(true, SeqCst);
        while IN_FLIGHT.load(SeqCst) == 0 && PARKED.load(SeqCst) {
            std::thread::park();
        }
        PARKED.store(false, SeqCst);
    }

    /// Whether the ticker is parked.
    #[cfg(test)]
    pub fn parked() -> bool {
        PARKED.load(SeqCst)
    }

    std::thread_local! {
        /// Guards alive on this thread: only the outermost touches the shared count.
        static DEPTH: std::cell::Cell<u32> = const { std::cell::Cell::new(0) };
    }

    /// Marks a guest call (or a run of them) in flight for as long as it lives. Nested guards
    /// on one thread cost a thread-local increment: a chain phase holds one around all its
    /// filters' calls, so the shared count (a cache line every worker writes) is touched
    /// twice a phase rather than twice a call.
    pub struct CallGuard(());

    impl CallGuard {
        pub fn enter() -> CallGuard {
            if DEPTH.replace(DEPTH.get() + 1) == 0 {
                IN_FLIGHT.fetch_add(1, SeqCst);
                if PARKED.load(SeqCst)
                    && PARKED.swap(false, SeqCst)
                    && let Some(t) = TICKER.get()
                {
                    t.unpark();
                }
            }
            CallGuard(())
        }
    }

    impl Drop for CallGuard {
        fn drop(&mut self) {
            if DEPTH.replace(DEPTH.get() - 1) == 1 {
                IN_FLIGHT.fetch_sub(1, SeqCst);
            }
        }
    }
}

/// Compiled modules by sha256: in memory, and on disk so a restart does not recompile.
pub struct ModuleCache {
    modules: Mutex<HashMap<[u8; 32], Arc<PluginModule>>>,
    dir: Option<PathBuf>,
    /// Modules compiled, and modules read back from the disk cache.
    pub compiled: std::sync::atomic::AtomicU64,
    pub from_disk: std::sync::atomic::AtomicU64,
}

impl ModuleCache {
    /// `dir`, if given, holds compiled modules (`<sha256>.cwasm`) across restarts.
    pub fn new(dir: Option<PathBuf>) -> ModuleCache {
        if let Some(d) = &dir {
            let _ = std::fs::create_dir_all(d);
        }
        ModuleCache {
            modules: Mutex::default(),
            dir,
            compiled: Default::default(),
            from_disk: Default::default(),
        }
    }

    /// The module with this sha256 (hex), if one was loaded: a filter that names its module's
    /// digest needs no read and no hash of the file when the module is already here.
    pub fn get(&self, sha256_hex: &str) -> Option<Arc<PluginModule>> {
        if sha256_hex.len() != 64 {
            return None;
        }
        let mut sha256 = [0u8; 32];
        for (i, byte) in sha256.iter_mut().enumerate() {
            *byte = u8::from_str_radix(sha256_hex.get(2 * i..2 * i + 2)?, 16).ok()?;
        }
        self.modules
            .lock()
            .expect("module cache lock")
            .get(&sha256)
            .cloned()
    }

    /// Checks and compiles `bytes`, or returns the module already compiled from them.
    pub fn load(
        &self,
        bytes: &[u8],
        expected_sha256: Option<&str>,
    ) -> Result<Arc<PluginModule>, ModuleError> {
        let sha256: [u8; 32] = Sha256::digest(bytes).into();
        if let Some(expected) = expected_sha256 {
            let actual = hex(&sha256);
            if !expected.eq_ignore_ascii_case(&actual) {
                return Err(ModuleError::Sha256Mismatch {
                    expected: expected.to_owned(),
                    actual,
                });
            }
        }
        if let Some(m) = self.modules.lock().expect("module cache lock").get(&sha256) {
            return Ok(m.clone());
        }
        if !bytes.starts_with(b"\0asm") {
            return Err(ModuleError::NotWasm);
        }
        let module = self.compile(&sha256, bytes)?;
        let plugin = Arc::new(check(sha256, module)?);
        self.modules
            .lock()
            .expect("module cache lock")
            .insert(sha256, plugin.clone());
        Ok(plugin)
    }

    fn compile(&self, sha256: &[u8; 32], bytes: &[u8]) -> Result<Module, ModuleError> {
        let engine = engine();
        let cached = self
            .dir
            .as_ref()
            .map(|d| d.join(format!("{}.cwasm", hex(sha256))));
        if let Some(m) = cached
            .as_deref()
            .and_then(|p| self.read_compiled(engine, p))
        {
            return Ok(m);
        }
        // Sidecars that share the directory (a mesh on one machine) compile a module once:
        // the first takes the lock and compiles, the others wait and read its result. The
        // kernel drops the lock of a process that dies.
        let _lock = cached.as_ref().and_then(|path| {
            let lock = std::fs::File::create(path.with_extension("lock")).ok()?;
            lock.lock().ok()?;
            Some(lock)
        });
        if let Some(m) = cached
            .as_deref()
            .and_then(|p| self.read_compiled(engine, p))
        {
            return Ok(m);
        }
        let module =
            Module::new(engine, bytes).map_err(|e| ModuleError::Compile(format!("{e:#}")))?;
        self.compiled
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        if let Some(path) = cached
            && let Ok(serialized) = module.serialize()
        {
            let tmp = path.with_extension(format!("tmp{}", std::process::id()));
            if std::fs::write(&tmp, serialized).is_ok() {
                let _ = std::fs::rename(&tmp, &path);
            }
        }
        Ok(module)
    }

    /// The compiled module at `path`, if there is a usable one.
    fn read_compiled(&self, engine: &Engine, path: &std::path::Path) -> Option<Module> {
        if !path.exists() {
            return None;
        }
        // SAFETY: the file was written by `Module::serialize` in `compile` for this same
        // module (named by its sha256); wasmtime checks it was made by a compatible engine.
        match unsafe { Module::deserialize_file(engine, path) } {
            Ok(m) => {
                self.from_disk
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                Some(m)
            }
            Err(e) => {
                tracing::debug!(error = %e, path = %path.display(), "recompiling a stale cached module");
                None
            }
        }
    }
}

/// Checks what cpp-host checks: an ABI marker, memory, an allocator, and known imports.
fn check(sha256: [u8; 32], module: Module) -> Result<PluginModule, ModuleError> {
    let exports: Vec<&str> = module.exports().map(|e| e.name()).collect();
    let abi = AbiVersion::MARKERS
        .iter()
        .find(|(m, _)| exports.contains(m))
        .map(|(_, v)| *v);
    let abi = match abi {
        Some(v) => v,
        None if exports.contains(&"proxy_abi_version_0_1_0") => return Err(ModuleError::Abi010),
        None => return Err(ModuleError::UnknownAbi),
    };
    if !exports.contains(&"memory") {
        return Err(ModuleError::MissingExport("memory"));
    }
    if !exports.contains(&"malloc") && !exports.contains(&"proxy_on_memory_allocate") {
        return Err(ModuleError::MissingExport("proxy_on_memory_allocate"));
    }
    if !exports.contains(&"proxy_on_context_create") {
        return Err(ModuleError::MissingExport("proxy_on_context_create"));
    }
    for import in module.imports() {
        let known = match import.module() {
            "env" => crate::abi::ENV_FUNCTIONS.contains(&import.name()),
            "wasi_snapshot_preview1" | "wasi_unstable" => true,
            _ => false,
        };
        if !known {
            return Err(ModuleError::UnknownImport(format!(
                "{}.{}",
                import.module(),
                import.name()
            )));
        }
    }
    Ok(PluginModule {
        sha256,
        module,
        abi,
    })
}

#[cfg(test)]
mod ticker_tests {
    use super::epoch;

    fn eventually(what: &str, f: impl Fn() -> bool) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while !f() {
            assert!(std::time::Instant::now() < deadline, "never {what}");
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
    }

    #[test]
    fn the_epoch_ticker_parks_when_no_guest_runs_and_runs_while_one_does() {
        let _ = super::engine();
        eventually("parked while idle", epoch::parked);
        let call = epoch::CallGuard::enter();
        assert!(!epoch::parked(), "a call wakes the ticker");
        // Well past the idle period, with the call still in flight: still ticking.
        std::thread::sleep(super::EPOCH_TICK * (epoch::IDLE_TICKS + 20));
        assert!(!epoch::parked());
        drop(call);
        eventually("parked again", epoch::parked);
    }
}
