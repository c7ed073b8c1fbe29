//! What the end-to-end tests share: a fake API server, and the mesh's processes.

pub mod api_server;
pub mod mesh;
