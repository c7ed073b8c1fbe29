//! gRPC passes through with trailers: a tonic client, the proxy, a tonic server (grpc.health.v1).

use std::time::Duration;

use tokio_stream::StreamExt;
use tonic::Code;
use tonic_health::ServingStatus;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus as Wire;
use tonic_health::pb::health_client::HealthClient;

use crate::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_unary_status_and_streaming_pass_through() {
    let (reporter, service) = tonic_health::server::health_reporter();
    reporter
        .set_service_status("shop.Cart", ServingStatus::Serving)
        .await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let upstream = listener.local_addr().unwrap();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(service)
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    let proxy = start_proxy(&simple_config(
        &[upstream],
        &cluster_extra("protocol: http2"),
        &route_extra("timeout: 0"),
    ));
    let addr = proxy.listener_addr("ingress").unwrap();
    let channel = tonic::transport::Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .expect("connect through the proxy");
    let mut client = HealthClient::new(channel);

    // Unary with a body, status in trailers.
    let reply = client
        .check(HealthCheckRequest {
            service: "shop.Cart".into(),
        })
        .await
        .unwrap();
    assert_eq!(reply.into_inner().status, Wire::Serving as i32);

    // A gRPC error status travels in the trailers-only response.
    let err = client
        .check(HealthCheckRequest {
            service: "nope".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);

    // Server streaming: updates arrive as the server sends them.
    let mut updates = client
        .watch(HealthCheckRequest {
            service: "shop.Cart".into(),
        })
        .await
        .unwrap()
        .into_inner();
    let first = updates.next().await.unwrap().unwrap();
    assert_eq!(first.status, Wire::Serving as i32);
    reporter
        .set_service_status("shop.Cart", ServingStatus::NotServing)
        .await;
    let second = tokio::time::timeout(Duration::from_secs(5), updates.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(second.status, Wire::NotServing as i32);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_local_replies_are_grpc_statuses() {
    // Nothing listens upstream: the proxy answers in gRPC, not with an HTTP 503 page.
    let proxy = start_proxy(&simple_config(
        &[dead_addr()],
        &cluster_extra("protocol: http2"),
        "",
    ));
    let addr = proxy.listener_addr("ingress").unwrap();
    let channel = tonic::transport::Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut client = HealthClient::new(channel);
    let err = client
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unavailable);
    assert!(
        err.message().contains("connection failure"),
        "{}",
        err.message()
    );
}
