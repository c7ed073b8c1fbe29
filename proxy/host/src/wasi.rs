//! `wasi_snapshot_preview1` for plugins: what a filter may do (write logs, read clocks and
//! randomness, see its plugin environment) works; files, sockets and processes are refused
//! with Envoy's answers. `poll_oneoff` and `sched_yield` return at once: a worker never blocks.

use std::time::{SystemTime, UNIX_EPOCH};

use wasmtime::{Caller, Linker, Module, Val, ValType};

use crate::abi::errno;
use crate::state::HostState;

type C<'a> = Caller<'a, HostState>;

fn memory<'a>(c: &'a mut C<'_>) -> Option<(&'a mut [u8], &'a mut HostState)> {
    let m = c.data().memory?;
    Some(m.data_and_store_mut(c))
}

fn put(mem: &mut [u8], ptr: i32, bytes: &[u8]) -> bool {
    let at = ptr as u32 as usize;
    match mem.get_mut(at..at.saturating_add(bytes.len())) {
        Some(dst) => {
            dst.copy_from_slice(bytes);
            true
        }
        None => false,
    }
}

fn get(mem: &[u8], ptr: i32, len: usize) -> Option<&[u8]> {
    let at = ptr as u32 as usize;
    mem.get(at..at.checked_add(len)?)
}

/// Writes a list of strings argv-style: pointers into `ptrs`, NUL-terminated bytes into `buf`.
fn write_list(mem: &mut [u8], ptrs: i32, buf: i32, items: &[String]) -> i32 {
    let mut at = buf as u32;
    for (i, item) in items.iter().enumerate() {
        if !put(mem, ptrs + 4 * i as i32, &at.to_le_bytes()) {
            return errno::FAULT;
        }
        let mut bytes = item.as_bytes().to_vec();
        bytes.push(0);
        if !put(mem, at as i32, &bytes) {
            return errno::FAULT;
        }
        at += bytes.len() as u32;
    }
    errno::SUCCESS
}

fn environ(state: &HostState) -> Vec<String> {
    state.env.iter().map(|(k, v)| format!("{k}={v}")).collect()
}

/// The preview1 functions with real implementations below.
const DEFINED: &[&str] = &[
    "fd_write",
    "clock_time_get",
    "clock_res_get",
    "random_get",
    "environ_sizes_get",
    "environ_get",
    "args_sizes_get",
    "args_get",
    "proc_exit",
    "sched_yield",
    "poll_oneoff",
    "fd_fdstat_get",
];

/// Defines the preview1 functions every module gets.
pub fn define(linker: &mut Linker<HostState>) -> wasmtime::Result<()> {
    for module in ["wasi_snapshot_preview1", "wasi_unstable"] {
        linker.func_wrap(
            module,
            "fd_write",
            |mut c: C<'_>, fd: i32, iovs: i32, n: i32, ret: i32| -> i32 {
                c.data_mut().host_calls += 1;
                if fd != 1 && fd != 2 {
                    return errno::BADF;
                }
                let Some((mem, state)) = memory(&mut c) else {
                    return errno::FAULT;
                };
                let mut out = Vec::new();
                for i in 0..n.max(0) {
                    let Some(iov) = get(mem, iovs + 8 * i, 8) else {
                        return errno::FAULT;
                    };
                    let ptr = i32::from_le_bytes(iov[..4].try_into().expect("4 bytes"));
                    let len = u32::from_le_bytes(iov[4..].try_into().expect("4 bytes")) as usize;
                    let Some(data) = get(mem, ptr, len) else {
                        return errno::FAULT;
                    };
                    out.extend_from_slice(data);
                }
                let text = String::from_utf8_lossy(&out);
                let text = text.trim_end();
                if !text.is_empty() {
                    if fd == 1 {
                        tracing::info!(target: "wasm", plugin = %state.plugin_label, "{text}");
                    } else {
                        tracing::error!(target: "wasm", plugin = %state.plugin_label, "{text}");
                    }
                }
                if put(mem, ret, &(out.len() as u32).to_le_bytes()) {
                    errno::SUCCESS
                } else {
                    errno::FAULT
                }
            },
        )?;
        linker.func_wrap(
            module,
            "clock_time_get",
            |mut c: C<'_>, id: i32, _precision: i64, ret: i32| -> i32 {
                c.data_mut().host_calls += 1;
                let nanos = match id {
                    0 => SystemTime::now()
                        .duration_since(UNIX_EPOCH)
                        .map_or(0, |d| d.as_nanos() as u64),
                    1 => monotonic_nanos(),
                    _ => return errno::NOTSUP,
                };
                let Some((mem, _)) = memory(&mut c) else {
                    return errno::FAULT;
                };
                if put(mem, ret, &nanos.to_le_bytes()) {
                    errno::SUCCESS
                } else {
                    errno::FAULT
                }
            },
        )?;
        linker.func_wrap(
            module,
            "clock_res_get",
            |mut c: C<'_>, id: i32, ret: i32| -> i32 {
                if !(0..=1).contains(&id) {
                    return errno::NOTSUP;
                }
                let Some((mem, _)) = memory(&mut c) else {
                    return errno::FAULT;
                };
                if put(mem, ret, &1u64.to_le_bytes()) {
                    errno::SUCCESS
                } else {
                    errno::FAULT
                }
            },
        )?;
        linker.func_wrap(
            module,
            "random_get",
            |mut c: C<'_>, buf: i32, len: i32| -> i32 {
                c.data_mut().host_calls += 1;
                // cpp-host caps a request at 64 KiB.
                if len as u32 > 64 * 1024 {
                    return errno::INVAL;
                }
                let mut bytes = vec![0u8; len as u32 as usize];
                rand::fill(&mut bytes[..]);
                let Some((mem, _)) = memory(&mut c) else {
                    return errno::FAULT;
                };
                if put(mem, buf, &bytes) {
                    errno::SUCCESS
                } else {
                    errno::FAULT
                }
            },
        )?;
        linker.func_wrap(
            module,
            "environ_sizes_get",
            |mut c: C<'_>, count: i32, size: i32| -> i32 {
                let Some((mem, state)) = memory(&mut c) else {
                    return errno::FAULT;
                };
                let env = environ(state);
                let total: usize = env.iter().map(|e| e.len() + 1).sum();
                if put(mem, count, &(env.len() as u32).to_le_bytes())
                    && put(mem, size, &(total as u32).to_le_bytes())
                {
                    errno::SUCCESS
                } else {
                    errno::FAULT
                }
            },
        )?;
        linker.func_wrap(
            module,
            "environ_get",
            |mut c: C<'_>, ptrs: i32, buf: i32| -> i32 {
                let Some((mem, state)) = memory(&mut c) else {
                    return errno::FAULT;
                };
                let env = environ(state);
                write_list(mem, ptrs, buf, &env)
            },
        )?;
        linker.func_wrap(
            module,
            "args_sizes_get",
            |mut c: C<'_>, count: i32, size: i32| -> i32 {
                let Some((mem, _)) = memory(&mut c) else {
                    return errno::FAULT;
                };
                if put(mem, count, &0u32.to_le_bytes()) && put(mem, size, &0u32.to_le_bytes()) {
                    errno::SUCCESS
                } else {
                    errno::FAULT
                }
            },
        )?;
        linker.func_wrap(module, "args_get", |_: C<'_>, _: i32, _: i32| -> i32 {
            errno::SUCCESS
        })?;
        linker.func_wrap(
            module,
            "proc_exit",
            |_: C<'_>, code: i32| -> wasmtime::Result<()> {
                Err(wasmtime::Error::msg(format!(
                    "plugin called proc_exit({code})"
                )))
            },
        )?;
        linker.func_wrap(module, "sched_yield", |_: C<'_>| -> i32 { errno::SUCCESS })?;
        // Returns no events at once, as cpp-host does ("the Go runtime requires it").
        linker.func_wrap(
            module,
            "poll_oneoff",
            |mut c: C<'_>, _in: i32, _out: i32, _n: i32, nevents: i32| -> i32 {
                let Some((mem, _)) = memory(&mut c) else {
                    return errno::FAULT;
                };
                if put(mem, nevents, &0u32.to_le_bytes()) {
                    errno::SUCCESS
                } else {
                    errno::FAULT
                }
            },
        )?;
        linker.func_wrap(
            module,
            "fd_fdstat_get",
            |mut c: C<'_>, fd: i32, ret: i32| -> i32 {
                if !(0..=2).contains(&fd) {
                    return errno::BADF;
                }
                // A character device with no rights beyond writing: enough for language runtimes.
                let mut stat = [0u8; 24];
                stat[0] = 2;
                stat[8..16].copy_from_slice(&0x40u64.to_le_bytes());
                let Some((mem, _)) = memory(&mut c) else {
                    return errno::FAULT;
                };
                if put(mem, ret, &stat) {
                    errno::SUCCESS
                } else {
                    errno::FAULT
                }
            },
        )?;
    }
    Ok(())
}

/// Defines every other preview1 function a module imports as a stub with the module's own
/// signature: files and descriptors answer `BADF`, paths and sockets `NOTCAPABLE`, the rest
/// `NOSYS`. Unknown `env` imports are left undefined, so instantiation names them.
pub fn define_stubs_for(linker: &mut Linker<HostState>, module: &Module) -> wasmtime::Result<()> {
    for import in module.imports() {
        if !matches!(import.module(), "wasi_snapshot_preview1" | "wasi_unstable") {
            continue;
        }
        let Some(ty) = import.ty().func().cloned() else {
            continue;
        };
        let name = import.name();
        if DEFINED.contains(&name) {
            continue;
        }
        let code = if name.starts_with("fd_") {
            errno::BADF
        } else if name.starts_with("path_") || name.starts_with("sock_") {
            errno::NOTCAPABLE
        } else {
            errno::NOSYS
        };
        let returns_i32 =
            ty.results().len() == 1 && matches!(ty.results().next(), Some(ValType::I32));
        linker.func_new(
            import.module(),
            name,
            ty,
            move |_, _, results: &mut [Val]| {
                if returns_i32 {
                    results[0] = Val::I32(code);
                }
                Ok(())
            },
        )?;
    }
    Ok(())
}

fn monotonic_nanos() -> u64 {
    static START: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    START
        .get_or_init(std::time::Instant::now)
        .elapsed()
        .as_nanos() as u64
}
