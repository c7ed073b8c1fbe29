//! Filters built with the published proxy-wasm crate (0.2.5) run unmodified on the wasmesh
//! host and behave as they do in Envoy. Driven in-process through the SDK harness.

use std::time::Duration;

use bytes::Bytes;
use wasmesh_artifacts::{AUTH, BODY, COUNTER, HEADERS, PROPERTIES, STATUSES, bytes as wasm};
use wasmesh_harness::{CalloutResponse, Harness, Upstream};

fn get(path: &str) -> http::Request<Bytes> {
    http::Request::get(path)
        .header("host", "example.com")
        .header("x-remove-me", "1")
        .body(Bytes::new())
        .unwrap()
}

#[test]
fn header_manipulation_configuration_and_local_responses() {
    let mut h = Harness::builder(&wasm(HEADERS))
        .plugin_config("blue")
        .build()
        .unwrap();
    let out = h.request(get("/a?b=c"), Upstream::ok("upstream body"));
    let up = out.upstream_request.expect("forwarded");
    assert_eq!(
        up.headers()["x-plugin-config"],
        "blue",
        "configuration reached on_configure"
    );
    assert!(up.headers().get("x-remove-me").is_none());
    assert!(up.headers().contains_key("x-context-id"));
    let resp = out.response.unwrap();
    assert_eq!(
        resp.headers()["x-wasm-path"],
        "/a?b=c",
        "request headers stay readable in the response phase"
    );

    let out = h.request(get("/hello"), Upstream::ok("never"));
    assert!(out.upstream_request.is_none(), "answered locally");
    let resp = out.response.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["x-hello"], "from-wasm");
    assert_eq!(resp.body(), "Hello, World!\n");
}

#[test]
fn body_rewriting_with_pause_buffers_until_the_end() {
    let mut h = Harness::builder(&wasm(BODY)).build().unwrap();
    let req = http::Request::post("/")
        .body(Bytes::from_static(b"payload"))
        .unwrap();
    let out = h.request(req, Upstream::ok("my secret is secret"));
    assert_eq!(
        out.upstream_request.unwrap().body(),
        "payload (seen by wasm)"
    );
    assert_eq!(out.response.unwrap().body(), "my ****** is ******");
}

#[test]
fn an_http_callout_decides_the_request() {
    let mut h = Harness::builder(&wasm(AUTH))
        .cluster("auth")
        .on_callout(|req| {
            let user =
                String::from_utf8_lossy(req.header("x-user").unwrap_or_default()).into_owned();
            let status = if user == "alice" { "200" } else { "401" };
            Ok(CalloutResponse {
                headers: vec![(":status".into(), Bytes::from(status))],
                body: Bytes::from(format!("user={user}")),
                trailers: vec![],
            })
        })
        .build()
        .unwrap();
    let req = http::Request::get("/")
        .header("x-user", "alice")
        .body(Bytes::new())
        .unwrap();
    let out = h.request(req, Upstream::ok("welcome"));
    assert_eq!(
        out.upstream_request.unwrap().headers()["x-auth"],
        "user=alice"
    );
    let req = http::Request::get("/")
        .header("x-user", "mallory")
        .body(Bytes::new())
        .unwrap();
    let out = h.request(req, Upstream::ok("never"));
    assert_eq!(out.response.unwrap().status(), 403);
    assert_eq!(
        out.local_reply.unwrap().headers,
        vec![("x-auth-status".to_string(), Bytes::from("401"))]
    );
    let calls = h.callouts();
    assert_eq!(calls.len(), 2);
    assert_eq!(calls[0].cluster, "auth");
    assert_eq!(calls[0].header(":path"), Some(&b"/check"[..]));
}

#[test]
fn a_failed_callout_reaches_the_filter_as_no_response() {
    let mut h = Harness::builder(&wasm(AUTH))
        .cluster("auth")
        .build()
        .unwrap();
    let out = h.request(get("/"), Upstream::ok("never"));
    assert_eq!(out.response.unwrap().status(), 403);
    assert_eq!(out.local_reply.unwrap().headers[0].1, "no response");
}

#[test]
fn shared_data_cas_metrics_and_ticks() {
    let mut h = Harness::builder(&wasm(COUNTER)).build().unwrap();
    for i in 1..=5 {
        let out = h.request(get("/"), Upstream::ok(""));
        assert_eq!(
            out.upstream_request.unwrap().headers()["x-request-count"],
            i.to_string()
        );
    }
    assert_eq!(h.metric("counter_requests"), Some(5));
    assert_eq!(h.shared_data("requests").unwrap(), &5u64.to_le_bytes()[..]);
    h.advance(Duration::from_millis(200));
    let ticks = h.metric("counter_ticks").unwrap();
    assert!(
        (3..=12).contains(&ticks),
        "20 ms ticks over 200 ms: {ticks}"
    );
}

#[test]
fn properties_use_envoys_encodings() {
    let mut h = Harness::builder(&wasm(PROPERTIES)).build().unwrap();
    let out = h.request(get("/p?q=1"), Upstream::ok(""));
    let r = out.response.unwrap();
    let header = |k: &str| r.headers()[k].to_str().unwrap().to_owned();
    assert_eq!(header("x-prop-path"), "/p?q=1");
    assert_eq!(header("x-prop-method"), "GET");
    assert_eq!(header("x-prop-source"), "127.0.0.1:50000");
    assert_eq!(
        header("x-prop-source-port"),
        "50000",
        "integers are 8 bytes little-endian"
    );
    assert_eq!(header("x-prop-code"), "200");
    assert_eq!(header("x-prop-plugin"), "plugin-0");
    assert_eq!(
        header("x-prop-state"),
        "yes",
        "set_property is readable later"
    );
    assert_eq!(header("x-prop-missing"), "<none>");
}

#[test]
fn every_status_the_sdk_checks_is_one_it_accepts() {
    let mut h = Harness::builder(&wasm(STATUSES))
        .cluster("auth")
        .build()
        .unwrap();
    let out = h.request(get("/"), Upstream::ok(""));
    assert!(out.failure.is_none(), "the SDK trapped: {:?}", out.failure);
    let report = out.upstream_request.unwrap().headers()["x-statuses"]
        .to_str()
        .unwrap()
        .to_owned();
    for expected in [
        "header=None",
        "body=Ok(false)",
        "shared=false",
        "property=false",
        "cas=Err(CasMismatch)",
        "resolve=Ok(None)",
        "dequeue=Ok(None)",
        "enqueue-missing=Err(NotFound)",
        "call-cluster=Err(BadArgument)",
        "call-path=Err(BadArgument)",
        "grpc=Err(ParseFailure)",
        "grpc-stream=Err(InternalFailure)",
        "foreign=Err(NotFound)",
        "incr=Ok(())",
        "decr-counter=Err(BadArgument)",
        "get-metric=Ok(2)",
        "missing-metric=Err(NotFound)",
        "effective=Err(BadArgument)",
        "trailer=Ok(None)",
        "response-headers=Ok(0)",
        "config=Ok(false)",
    ] {
        assert!(
            report.split(';').any(|r| r == expected),
            "expected {expected} in {report}"
        );
    }
}
