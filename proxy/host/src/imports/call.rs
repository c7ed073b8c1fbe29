//! One host call: counted, run as an ordinary function that stops early with `?`, and its
//! outcome turned into the `i32` status the guest gets (or a trap).

use wasmtime::{Caller, Linker, WasmTy};

use crate::abi::Status;
use crate::state::HostState;

pub(super) type C<'a> = Caller<'a, HostState>;

/// How a host call ends when it does not end with `OK`.
pub(super) enum Stop {
    /// A status for the guest: `INVALID_MEMORY_ACCESS`, `NOT_FOUND`, `BAD_ARGUMENT`, ...
    Status(Status),
    /// A trap: the guest's allocator is missing or trapped; the VM fails.
    Trap(wasmtime::Error),
}

impl From<Status> for Stop {
    fn from(s: Status) -> Stop {
        Stop::Status(s)
    }
}

impl From<wasmtime::Error> for Stop {
    fn from(e: wasmtime::Error) -> Stop {
        Stop::Trap(e)
    }
}

/// What a host function returns: `Ok(())` is `OK`.
pub(super) type Answer = Result<(), Stop>;

/// A status as an answer: `OK` goes on, any other ends the call with it.
pub(super) fn answer(status: Status) -> Answer {
    match status {
        Status::Ok => Ok(()),
        s => Err(Stop::Status(s)),
    }
}

/// The guest's view of an answer: a status, or a trap.
fn to_guest(answer: Answer) -> wasmtime::Result<i32> {
    match answer {
        Ok(()) => Ok(Status::Ok as i32),
        Err(Stop::Status(s)) => Ok(s as i32),
        Err(Stop::Trap(e)) => Err(e),
    }
}

/// A function of module `env`: `fn(&mut C, args...) -> Answer`, with wasm argument types.
pub(super) trait HostFn<Args> {
    /// Defines it as `env.name`; each call adds one to `HostState::host_calls`.
    fn define(self, linker: &mut Linker<HostState>, name: &str) -> wasmtime::Result<()>;
}

macro_rules! impl_host_fn {
    ($($arg:ident)*) => {
        impl<F, $($arg: WasmTy,)*> HostFn<($($arg,)*)> for F
        where
            F: Fn(&mut C<'_>, $($arg),*) -> Answer + Send + Sync + 'static,
        {
            #[allow(non_snake_case)]
            fn define(self, linker: &mut Linker<HostState>, name: &str) -> wasmtime::Result<()> {
                linker.func_wrap("env", name, move |mut c: C<'_>, $($arg: $arg),*| {
                    c.data_mut().host_calls += 1;
                    to_guest(self(&mut c, $($arg),*))
                })?;
                Ok(())
            }
        }
    };
}

impl_host_fn!();
impl_host_fn!(A1);
impl_host_fn!(A1 A2);
impl_host_fn!(A1 A2 A3);
impl_host_fn!(A1 A2 A3 A4);
impl_host_fn!(A1 A2 A3 A4 A5);
impl_host_fn!(A1 A2 A3 A4 A5 A6);
impl_host_fn!(A1 A2 A3 A4 A5 A6 A7);
impl_host_fn!(A1 A2 A3 A4 A5 A6 A7 A8);
impl_host_fn!(A1 A2 A3 A4 A5 A6 A7 A8 A9);
impl_host_fn!(A1 A2 A3 A4 A5 A6 A7 A8 A9 A10);
impl_host_fn!(A1 A2 A3 A4 A5 A6 A7 A8 A9 A10 A11);
impl_host_fn!(A1 A2 A3 A4 A5 A6 A7 A8 A9 A10 A11 A12);

/// Defines `env.name` as `f` (see [`HostFn`]).
pub(super) fn host_fn<Args>(
    linker: &mut Linker<HostState>,
    name: &str,
    f: impl HostFn<Args>,
) -> wasmtime::Result<()> {
    f.define(linker, name)
}
