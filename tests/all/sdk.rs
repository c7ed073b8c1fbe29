//! wasmesh's own SDK, through the harness: configuration, errors as values, callouts, host
//! extensions, metrics, body rewriting.

use bytes::Bytes;
use wasmesh_artifacts::{SDK_DEMO, bytes as wasm};
use wasmesh_harness::{CalloutResponse, Harness, Upstream};

const CONFIG: &str = r#"{"header": "x-team", "value": "blue", "canary_cluster": "reviews-v2"}"#;

fn req(path: &str) -> http::Request<Bytes> {
    http::Request::get(path).body(Bytes::new()).unwrap()
}

#[test]
fn configuration_headers_local_replies_and_metrics() {
    let mut h = Harness::builder(&wasm(SDK_DEMO))
        .plugin_config(CONFIG)
        .build()
        .unwrap();
    let out = h.request(req("/"), Upstream::ok("ok"));
    assert_eq!(out.upstream_request.unwrap().headers()["x-team"], "blue");
    assert_eq!(out.response.unwrap().headers()["x-sdk-status"], "200");

    let out = h.request(req("/teapot"), Upstream::ok("never"));
    assert!(out.upstream_request.is_none());
    let r = out.response.unwrap();
    assert_eq!(
        (r.status().as_u16(), r.body().as_ref()),
        (418, &b"short and stout\n"[..])
    );

    // A filter error is a value: the request gets 500, the VM lives on.
    let out = h.request(req("/fail"), Upstream::ok("never"));
    assert_eq!(out.response.unwrap().status(), 500);
    assert!(h.vm_failure(0).is_none());
    assert_eq!(
        h.metric("sdk_demo_requests"),
        Some(3),
        "on_log runs for every request, local replies included"
    );
}

#[test]
fn a_bad_configuration_is_refused() {
    let err = Harness::builder(&wasm(SDK_DEMO))
        .plugin_config(r#"{"header": "", "value": "x"}"#)
        .build()
        .err()
        .unwrap();
    assert!(
        err.to_string()
            .contains("proxy_on_configure returned false"),
        "{err}"
    );
    let err = Harness::builder(&wasm(SDK_DEMO))
        .plugin_config("not json")
        .build()
        .err()
        .unwrap();
    assert!(err.to_string().contains("proxy_on_configure"), "{err}");
}

#[test]
fn callouts_and_host_extensions() {
    let mut h = Harness::builder(&wasm(SDK_DEMO))
        .plugin_config(CONFIG)
        .cluster("auth")
        .on_callout(|_| {
            Ok(CalloutResponse {
                headers: vec![(":status".into(), "200".into())],
                body: "alice".into(),
                trailers: vec![],
            })
        })
        .build()
        .unwrap();
    let out = h.request(req("/check"), Upstream::ok("ok"));
    assert_eq!(
        out.upstream_request.unwrap().headers()["x-verified"],
        "alice"
    );
    assert_eq!(h.callouts()[0].header(":path"), Some(&b"/verify"[..]));

    let canary = http::Request::get("/")
        .header("x-canary", "1")
        .body(Bytes::new())
        .unwrap();
    let out = h.request(canary, Upstream::ok("ok"));
    assert_eq!(
        out.decisions.upstream_cluster.as_deref(),
        Some("reviews-v2")
    );

    let shout = http::Request::get("/")
        .header("x-shout", "1")
        .body(Bytes::new())
        .unwrap();
    let out = h.request(shout, Upstream::ok("quiet please"));
    assert_eq!(out.response.unwrap().body(), "QUIET PLEASE");
}
