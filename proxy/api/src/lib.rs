//! The wasmesh control-plane API (`proto/wasmesh.proto`), shared by the proxy and the control
//! plane: the generated messages, the `MeshConfig` service proxies call and the `MeshAdmin`
//! service operators call.

#![allow(clippy::all, missing_docs)]

tonic::include_proto!("wasmesh.v1");

/// The largest message either side accepts. Snapshots of big meshes are a few hundred KiB;
/// modules travel in chunks of [`MODULE_CHUNK`].
pub const MAX_MESSAGE: usize = 16 << 20;

/// Bytes per `ModuleChunk`.
pub const MODULE_CHUNK: usize = 1 << 20;
