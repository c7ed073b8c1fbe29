//! `tcp_proxy` listeners: opaque TCP to a cluster's endpoints, balanced, with the cluster's
//! connection limit; real sockets both ways.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::Duration;

use crate::support::*;

/// A TCP server that answers each connection with `name:` and what it received, after the
/// client is done sending.
pub(crate) fn echo_server(name: &'static str) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut s) = stream else { return };
            std::thread::spawn(move || {
                let mut got = Vec::new();
                let _ = s.read_to_end(&mut got);
                let _ = s.write_all(name.as_bytes());
                let _ = s.write_all(b":");
                let _ = s.write_all(&got);
            });
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_is_proxied_to_the_clusters_endpoints_in_turn() {
    let (a, b) = (echo_server("a"), echo_server("b"));
    let proxy = start_proxy(&format!(
        r#"
workers: 1
admin: {{address: "127.0.0.1:0"}}
listeners:
- name: db
  address: "127.0.0.1:0"
  tcp_proxy: {{cluster: db}}
clusters:
- name: db
  protocol: tcp
  lb_policy: round_robin
  endpoints: ["{a}", "{b}"]
"#
    ));
    let addr = proxy.listener_addr("db").unwrap();
    let answers = tokio::task::spawn_blocking(move || {
        (0..4)
            .map(|i| tcp_exchange(addr, format!("hello {i}").as_bytes()).unwrap())
            .collect::<Vec<_>>()
    })
    .await
    .unwrap();
    let text: Vec<String> = answers
        .iter()
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect();
    // Each connection went to one endpoint and came back whole; both endpoints served.
    for (i, t) in text.iter().enumerate() {
        assert!(
            t == &format!("a:hello {i}") || t == &format!("b:hello {i}"),
            "{t}"
        );
    }
    assert!(text.iter().any(|t| t.starts_with("a:")), "{text:?}");
    assert!(text.iter().any(|t| t.starts_with("b:")), "{text:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_max_connections_a_tcp_connection_is_closed() {
    // A server that holds each connection open until told to go.
    let held = TcpListener::bind("127.0.0.1:0").unwrap();
    let held_addr = held.local_addr().unwrap();
    std::thread::spawn(move || {
        let mut open = Vec::new();
        for s in held.incoming().flatten() {
            open.push(s);
        }
    });
    let proxy = start_proxy(&format!(
        r#"
workers: 1
admin: {{address: "127.0.0.1:0"}}
listeners:
- name: db
  address: "127.0.0.1:0"
  tcp_proxy: {{cluster: db}}
clusters:
- name: db
  protocol: tcp
  circuit_breakers: {{max_connections: 1}}
  endpoints: ["{held_addr}"]
"#
    ));
    let addr = proxy.listener_addr("db").unwrap();
    let first = TcpStream::connect(addr).unwrap();
    eventually(
        "the first connection reaches the server",
        Duration::from_secs(5),
        || async {
            metric(&proxy, "wasmesh_upstream_cx_active{cluster=\"db\"}")
                .await
                .unwrap_or(0.0)
                == 1.0
        },
    )
    .await;
    let refused = tokio::task::spawn_blocking(move || tcp_exchange(addr, b"x"))
        .await
        .unwrap();
    assert!(
        refused.as_ref().map_or(true, Vec::is_empty),
        "a second connection went through: {refused:?}"
    );
    assert_eq!(
        metric(&proxy, "wasmesh_upstream_cx_overflow_total{cluster=\"db\"}").await,
        Some(1.0)
    );
    drop(first);
}
