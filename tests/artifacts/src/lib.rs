//! Paths of the Wasm guests built from this repository (see `build.rs`).

include!(concat!(env!("OUT_DIR"), "/artifacts.rs"));

/// Reads a built guest.
pub fn bytes(path: &str) -> Vec<u8> {
    std::fs::read(path).unwrap_or_else(|e| panic!("read {path}: {e}"))
}
