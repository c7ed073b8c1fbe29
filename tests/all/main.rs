//! Integration tests: the real proxy (library and binary) between real clients and real
//! servers on loopback. One test binary, as wasmtime does, to keep link time down.

mod support;

mod access_log;
mod admin;
mod assemblyscript;
mod authz;
mod binary;
mod bodies;
mod circuit_breakers;
mod compat;
mod control_plane;
mod dashboard;
mod differential;
mod egress_tls;
mod envoy_parity;
mod grpc;
mod hardening;
mod identity;
mod interception;
mod istio_circuit_breaking;
mod istio_faults;
mod istio_metrics;
mod istio_mirroring;
mod istio_routing;
mod istio_timeouts;
mod journey;
mod layout;
mod mtls;
mod oci_infra;
mod oci_plugins;
mod oci_token_auth;
mod plugins;
mod probes;
mod prometheus;
mod request_path;
mod retries;
mod routing;
mod sdk;
mod smuggling;
mod tcp_proxy;
mod tracing;
mod transparent;
mod upgrade;
