//! The library behind the `wasmesh` command, shared with wasmesh's criterion benchmarks.

pub mod bench;
pub mod dashboard;
pub mod mesh;
