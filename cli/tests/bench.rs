//! `wasmesh bench` end to end: the binary against the project's own plugins and test filters.
//! Request counts are small: these check the command, not the figures.

use std::path::Path;
use std::process::{Command, Output};

use serde_json::Value;
use wasmesh_artifacts::{AUTHZ, CIRCUIT_BREAKER, FAULT, MIRROR, NOOP, ROUTER, SLOW};
use wasmesh_cli::bench::PLUGIN_FILES;
use wasmesh_controlplane::AUTHZ_PLUGIN_FILE;

const ROUTER_CONFIG: &str = r#"{"virtual_hosts": [{"name": "all", "domains": ["*"], "routes": [
  {"id": "api", "matches": [{"uri": {"prefix": "/api"}}],
   "action": {"route": {"destinations": [{"cluster": "upstream", "weight": 100}]}}},
  {"id": "default/all", "action": {"route": {"destinations": [{"cluster": "upstream"}]}}}]}]}"#;
const FAULT_CONFIG: &str =
    r#"{"routes": {"api": {"abort": {"http_status": 503, "percentage": 0.0}}}}"#;
const MIRROR_CONFIG: &str =
    r#"{"routes": {"default/all": [{"cluster": "upstream", "percentage": 100.0}]}}"#;
const BREAKER_CONFIG: &str = r#"{"clusters": {"upstream": {"max_requests": 100000}}}"#;

fn wasmesh(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_wasmesh"))
        .args(args)
        .output()
        .expect("run wasmesh")
}

/// Runs with `--json` and returns the report.
fn report(args: &[&str]) -> Value {
    let mut all = vec!["bench", "--json"];
    all.extend_from_slice(args);
    let out = wasmesh(&all);
    assert!(
        out.status.success(),
        "wasmesh {all:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&out.stdout)))
}

fn filter(path: &str, config: &str) -> String {
    format!("{path}:{config}")
}

fn num(v: &Value) -> f64 {
    v.as_f64().unwrap_or_else(|| panic!("not a number: {v}"))
}

fn check_latency(l: &Value, requests: u64) {
    assert_eq!(l["requests"].as_u64(), Some(requests), "{l}");
    assert!(num(&l["requests_per_sec"]) > 0.0);
    let (p50, p90, p99, p999) = (
        num(&l["p50_ns"]),
        num(&l["p90_ns"]),
        num(&l["p99_ns"]),
        num(&l["p999_ns"]),
    );
    assert!(0.0 < p50 && p50 <= p90 && p90 <= p99 && p99 <= p999, "{l}");
    assert!(num(&l["mean_ns"]) > 0.0);
}

#[test]
fn the_projects_plugins_and_noop() {
    let dir = tempfile::tempdir().unwrap();
    let router_config = dir.path().join("router.json");
    std::fs::write(&router_config, ROUTER_CONFIG).unwrap();
    let chain = [
        filter(ROUTER, &format!("@{}", router_config.display())),
        filter(FAULT, FAULT_CONFIG),
        filter(MIRROR, MIRROR_CONFIG),
        filter(CIRCUIT_BREAKER, BREAKER_CONFIG),
        NOOP.to_owned(),
    ];
    let mut args = vec![];
    for f in &chain {
        args.extend(["--filter", f.as_str()]);
    }
    args.extend([
        "--requests-count",
        "300",
        "--rounds",
        "3",
        "--path",
        "/api/items",
        "-H",
        "x-user: bench",
        "--body-size",
        "64",
    ]);
    let r = report(&args);

    let names: Vec<&str> = r["chain"]["filters"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        [
            "plugin_router",
            "plugin_fault",
            "plugin_mirror",
            "plugin_circuit_breaker",
            "filter_noop"
        ]
    );
    assert_eq!(r["baseline"]["label"], "no filters");
    let filters = r["filters"].as_array().unwrap();
    assert_eq!(filters.len(), 5);
    let mut previous = f64::INFINITY;
    for f in filters {
        let mean = num(&f["mean_ns"]);
        assert!(mean > 0.0 && mean <= previous, "not slowest first: {f}");
        previous = mean;
        assert!(num(&f["p50_ns"]) > 0.0 && num(&f["p99_ns"]) >= num(&f["p50_ns"]));
        assert!(num(&f["memory_bytes"]) >= 65536.0, "{f}");
        assert!(num(&f["host_calls_per_request"]) >= 0.0);
        let callbacks: Vec<&str> = f["callbacks"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["callback"].as_str().unwrap())
            .collect();
        for cb in [
            "request_headers",
            "request_body",
            "response_headers",
            "done",
        ] {
            assert!(callbacks.contains(&cb), "{cb} missing in {f}");
        }
    }
    let router = filters
        .iter()
        .find(|f| f["name"] == "plugin_router")
        .unwrap();
    assert!(
        num(&router["host_calls_per_request"]) >= 1.0,
        "the router reads headers: {router}"
    );

    let ip = &r["in_process"];
    check_latency(&ip["chain"], 300);
    check_latency(&ip["baseline"], 300);
    assert_eq!(ip["chain"]["outcomes"]["upstream"], 300);
    assert_eq!(ip["chain"]["round_means_ns"].as_array().unwrap().len(), 3);
    assert!(num(&ip["comparison"]["ratio"]) > 1.0);
    assert!(ip["comparison"]["verdict"].is_string());
    assert!(r["through_proxy"].is_null());
}

#[test]
fn a_proxy_config_through_the_proxy() {
    let dir = tempfile::tempdir().unwrap();
    let yaml = format!(
        r#"
listeners:
- name: ingress
  address: "127.0.0.1:0"
  http_filters:
  - {{name: router, url: "{ROUTER}", plugin_config: {ROUTER_CONFIG:?}}}
  - {{name: noop, url: "{NOOP}"}}
  virtual_hosts:
  - name: all
    domains: ["*"]
    routes:
    - match: {{prefix: /}}
      cluster: upstream
clusters:
- name: upstream
  endpoints: ["127.0.0.1:9"]
"#
    );
    let config = dir.path().join("proxy.yaml");
    std::fs::write(&config, yaml).unwrap();
    let config = config.display().to_string();
    let r = report(&[
        "--config",
        &config,
        "--through-proxy",
        "--connections",
        "2",
        "--requests-count",
        "200",
        "--rounds",
        "2",
    ]);
    // In the proxy's order: same phase and priority, so by name.
    assert_eq!(r["chain"]["filters"], serde_json::json!(["noop", "router"]));
    let p = &r["through_proxy"];
    check_latency(&p["chain"], 200);
    check_latency(&p["baseline"], 200);
    assert_eq!(p["chain"]["outcomes"]["200"], 200, "{p}");
    assert_eq!(p["baseline"]["outcomes"]["200"], 200, "{p}");
    assert_eq!(p["connections"], 2);
}

#[test]
fn the_slow_filter_ranks_first_and_is_slower() {
    // Enough rounds for the verdict to hold when another test shares the two cores (a round
    // that runs while it compiles modules can be twice as slow).
    let slow = filter(SLOW, "300");
    let r = report(&[
        "--filter",
        NOOP,
        "--filter",
        &slow,
        "--requests-count",
        "240",
        "--rounds",
        "8",
    ]);
    let filters = r["filters"].as_array().unwrap();
    assert_eq!(filters[0]["name"], "filter_slow", "{r}");
    assert_eq!(filters[1]["name"], "filter_noop");
    // Medians: a preemption on a loaded machine lands in one call's time and can lift the
    // fast filter's mean a long way (CI once saw under 20x that way).
    assert!(
        num(&filters[0]["p50_ns"]) > 20.0 * num(&filters[1]["p50_ns"]),
        "{r}"
    );
    assert!(num(&filters[0]["share_of_chain"]) > 0.9);
    assert_eq!(r["in_process"]["comparison"]["verdict"], "slower", "{r}");

    // And against the fast filter alone as the baseline, as a table.
    let out = wasmesh(&[
        "bench",
        "--filter",
        NOOP,
        "--filter",
        &slow,
        "--baseline",
        NOOP,
        "--requests-count",
        "240",
        "--rounds",
        "8",
    ]);
    assert!(out.status.success());
    let table = String::from_utf8(out.stdout).unwrap();
    let first = table
        .lines()
        .skip_while(|l| !l.starts_with("Per filter"))
        .nth(2)
        .unwrap();
    assert!(first.trim_start().starts_with("filter_slow"), "{table}");
    assert!(table.contains("baseline  filter_noop"), "{table}");
    assert!(table.contains(": slower"), "{table}");
}

#[test]
fn requests_from_a_file() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("requests.jsonl");
    std::fs::write(
        &file,
        "# two requests in turn\n\
         {\"method\": \"POST\", \"path\": \"/api\", \"headers\": {\"x-a\": \"1\"}, \"body_size\": 100}\n\
         \n\
         {\"path\": \"/\"}\n",
    )
    .unwrap();
    let r = report(&[
        "--filter",
        NOOP,
        "--requests",
        file.to_str().unwrap(),
        "--requests-count",
        "100",
        "--rounds",
        "2",
    ]);
    assert_eq!(r["requests"].as_array().unwrap().len(), 2);
    let body = r["filters"][0]["callbacks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["callback"] == "request_body")
        .expect("request_body ran");
    assert!((num(&body["requests_share"]) - 0.5).abs() < 0.01, "{body}");
}

#[test]
fn plots() {
    let dir = tempfile::tempdir().unwrap();
    for ext in ["svg", "png"] {
        let path = dir.path().join(format!("latency.{ext}"));
        let out = wasmesh(&[
            "bench",
            "--filter",
            NOOP,
            "--requests-count",
            "200",
            "--rounds",
            "2",
            "--plot",
            path.to_str().unwrap(),
        ]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let bytes = std::fs::read(&path).unwrap();
        if ext == "svg" {
            let text = String::from_utf8(bytes).unwrap();
            assert!(text.starts_with("<svg") || text.starts_with("<?xml"));
            let doc = roxmltree::Document::parse(&text).expect("well-formed SVG");
            assert_eq!(doc.root_element().tag_name().name(), "svg");
            let texts: Vec<_> = doc
                .descendants()
                .filter(|n| n.has_tag_name("text"))
                .filter_map(|n| n.text())
                .collect();
            assert!(
                texts.iter().any(|t| t.contains("filter_noop (in-process)")),
                "{texts:?}"
            );
            assert!(doc.descendants().any(|n| n.has_tag_name("polyline")));
        } else {
            assert!(bytes.starts_with(b"\x89PNG\r\n\x1a\n"));
            let decoder = png::Decoder::new(std::io::Cursor::new(bytes));
            let mut reader = decoder.read_info().expect("a PNG header");
            let mut buf = vec![0; reader.output_buffer_size()];
            let frame = reader.next_frame(&mut buf).expect("a PNG image");
            assert_eq!((frame.width, frame.height), (1000, 560));
            // Not blank: some pixels are not white.
            assert!(buf[..frame.buffer_size()].iter().any(|b| *b < 200));
        }
    }
}

/// Runs a bad command: it must fail with one line naming `file` and `reason`, and no panic.
fn refused(args: &[&str], file: &str, reason: &str) {
    let mut all = vec!["bench", "--requests-count", "10", "--rounds", "1"];
    all.extend_from_slice(args);
    let out = wasmesh(&all);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{all:?} succeeded");
    assert!(!stderr.contains("panicked"), "{stderr}");
    let lines: Vec<_> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "not one line: {stderr}");
    assert!(
        lines[0].contains(file) && lines[0].contains(reason),
        "{:?} should name {file:?} and {reason:?}",
        lines[0]
    );
}

#[test]
fn bad_input_is_refused_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, bytes: &[u8]| {
        let p = dir.path().join(name);
        std::fs::write(&p, bytes).unwrap();
        p.display().to_string()
    };
    let text = write("notes.wasm", b"hello, not a module");
    refused(&["--filter", &text], &text, "not a WebAssembly module");

    // A valid module that is not a proxy-wasm plugin.
    let empty = write("empty.wasm", b"\0asm\x01\0\0\0");
    refused(&["--filter", &empty], &empty, "ABI");

    let missing = dir.path().join("missing.wasm").display().to_string();
    refused(&["--filter", &missing], &missing, "cannot read");

    let slow = filter(SLOW, "fast please");
    refused(
        &["--filter", NOOP, "--filter", &slow],
        SLOW,
        "rejected its configuration",
    );
    refused(
        &["--filter", &slow],
        "filter_slow",
        "plugin_config must be a number",
    );
    let router = filter(ROUTER, "{\"virtual_hosts\": 3}");
    refused(&["--filter", &router], ROUTER, "rejected its configuration");

    let profile = dir.path().join("nope.jsonl").display().to_string();
    refused(
        &["--filter", NOOP, "--requests", &profile],
        &profile,
        "cannot read",
    );
    let garbled = write("requests.jsonl", b"{\"path\": \"/\"}\n{\"path\": \n");
    refused(
        &["--filter", NOOP, "--requests", &garbled],
        &garbled,
        "line 2",
    );
    let bad_path = write("bad.jsonl", b"{\"path\": \"no-slash\"}\n");
    refused(
        &["--filter", NOOP, "--requests", &bad_path],
        &bad_path,
        "must start with '/'",
    );

    let config = write("proxy.yaml", b"listeners: 12\n");
    refused(&["--config", &config], &config, "not a usable proxy config");

    let plot = dir.path().join("plot.jpg").display().to_string();
    refused(&["--filter", NOOP, "--plot", &plot], &plot, ".svg or .png");
    assert!(!Path::new(&plot).exists());
}

/// [`SHOP_SERVICE`] with a DestinationRule with subsets, a connection pool and outlier
/// detection, and a VirtualService with a header match, a 90/10 split, a fault that aborts no
/// request and a mirror.
fn shop() -> String {
    format!("{SHOP_SERVICE}---{SHOP_SPLIT}")
}

const SHOP_SPLIT: &str = r#"
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: shop}
spec:
  host: shop.example.com
  trafficPolicy:
    connectionPool:
      tcp: {maxConnections: 100}
      http: {http1MaxPendingRequests: 100, http2MaxRequests: 1000}
    outlierDetection:
      consecutive5xxErrors: 5
      interval: 10s
      baseEjectionTime: 30s
      maxEjectionPercent: 50
  subsets:
  - {name: v1, labels: {version: v1}}
  - {name: v2, labels: {version: v2}}
  - {name: v3, labels: {version: v3}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: shop}
spec:
  hosts: [shop.example.com]
  http:
  - name: testers
    match: [{headers: {end-user: {exact: tester}}}]
    route: [{destination: {host: shop.example.com, subset: v2}}]
  - name: split
    fault: {abort: {httpStatus: 503, percentage: {value: 0}}}
    mirror: {host: shop.example.com, subset: v2}
    mirrorPercentage: {value: 50}
    route:
    - {destination: {host: shop.example.com, subset: v1}, weight: 90}
    - {destination: {host: shop.example.com, subset: v2}, weight: 10}
"#;

/// A `--plugins` directory with the project's five plugins under the names it wants.
fn plugins_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for (from, name) in [ROUTER, FAULT, MIRROR, CIRCUIT_BREAKER, AUTHZ]
        .iter()
        .zip(PLUGIN_FILES.into_iter().chain([AUTHZ_PLUGIN_FILE]))
    {
        std::fs::copy(from, dir.path().join(name)).unwrap();
    }
    dir
}

#[test]
fn a_chain_from_istio_manifests() {
    let manifests = tempfile::tempdir().unwrap();
    std::fs::write(manifests.path().join("shop.yaml"), shop()).unwrap();
    let requests = manifests.path().join("requests.jsonl");
    std::fs::write(
        &requests,
        "{\"headers\": {\"host\": \"shop.example.com\", \"end-user\": \"tester\"}}\n\
         {\"path\": \"/cart\", \"headers\": {\"host\": \"shop.example.com\"}}\n",
    )
    .unwrap();
    let plugins = plugins_dir();
    let args = [
        "bench",
        "--json",
        "--manifests",
        manifests.path().to_str().unwrap(),
        "--plugins",
        plugins.path().to_str().unwrap(),
        "--requests",
        requests.to_str().unwrap(),
        "--requests-count",
        "200",
        "--rounds",
        "2",
    ];
    let out = wasmesh(&args);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    // The subset that selects no endpoint is a warning, printed, and the run goes on.
    assert!(
        stderr.contains("Warning [IST0173] (DestinationRule shop.default"),
        "{stderr}"
    );
    let r: Value = serde_json::from_slice(&out.stdout).unwrap();

    let chain = ["router", "fault", "mirror", "circuit-breaker"];
    assert_eq!(r["chain"]["filters"], serde_json::json!(chain), "{r}");
    assert!(
        r["chain"]["label"].as_str().unwrap().ends_with("#outbound"),
        "{r}"
    );
    assert!(
        r["chain"]["warnings"][0]
            .as_str()
            .unwrap()
            .contains("IST0173")
    );
    let filters = r["filters"].as_array().unwrap();
    assert_eq!(filters.len(), 4);
    for (position, name) in chain.iter().enumerate() {
        let f = filters.iter().find(|f| f["name"] == *name).unwrap();
        assert_eq!(f["position"], position, "{f}");
        assert!(num(&f["mean_ns"]) > 0.0, "{f}");
        assert!(num(&f["p50_ns"]) > 0.0, "{f}");
        assert!(
            f["file"]
                .as_str()
                .unwrap()
                .contains(&format!("plugin_{}.wasm", name.replace('-', "_"))),
            "{f}"
        );
    }
    // Every request was routed (to v2 for the tester, split between v1 and v2 for the rest).
    assert_eq!(r["in_process"]["chain"]["outcomes"]["upstream"], 200, "{r}");
    assert!(num(&r["in_process"]["comparison"]["difference_ns"]) > 0.0);
}

#[test]
fn bad_manifests_are_refused_with_their_diagnostics() {
    let plugins = plugins_dir();
    let plugins = plugins.path().to_str().unwrap();
    let bad = |yaml: &str, expected: &[&str]| {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("shop.yaml");
        std::fs::write(&file, yaml).unwrap();
        let out = wasmesh(&[
            "bench",
            "--manifests",
            dir.path().to_str().unwrap(),
            "--plugins",
            plugins,
            "--requests-count",
            "10",
        ]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{stderr}");
        assert!(!stderr.contains("panicked"), "{stderr}");
        assert!(out.stdout.is_empty(), "nothing was run");
        // istioctl's form: `Error [CODE] (Kind name.namespace file:line) message`.
        let origin = format!("(VirtualService shop.default {}:", file.display());
        let errors: Vec<_> = stderr
            .lines()
            .filter(|l| l.starts_with("Error [IST0106] "))
            .collect();
        assert!(!errors.is_empty(), "no istioctl-style error: {stderr}");
        assert!(errors.iter().all(|l| l.contains(&origin)), "{stderr}");
        assert!(
            errors
                .iter()
                .any(|l| expected.iter().all(|e| l.contains(e))),
            "no error says {expected:?}: {stderr}"
        );
    };
    bad(
        &shop().replace("weight: 90}", "weight: -5}"),
        &["spec.http[1].route[0].weight", "weight -5 is not in range"],
    );
    bad(
        &shop().replace(
            "route: [{destination: {host: shop.example.com, subset: v2}}]",
            "route: [{destination: {subset: v2}}]",
        ),
        &["missing field `host`"],
    );

    // A plugin module missing: the file and the command that builds it.
    let manifests = tempfile::tempdir().unwrap();
    std::fs::write(manifests.path().join("shop.yaml"), shop()).unwrap();
    let empty = tempfile::tempdir().unwrap();
    let module = empty
        .path()
        .join("plugin_router.wasm")
        .display()
        .to_string();
    refused(
        &[
            "--manifests",
            manifests.path().to_str().unwrap(),
            "--plugins",
            empty.path().to_str().unwrap(),
        ],
        &module,
        "cargo build --release --target wasm32-wasip1 -p plugin-router",
    );
}

/// A service with two versions, and nothing else: the plugins it gives are the router with
/// one default route and the other three with empty configurations.
const SHOP_SERVICE: &str = r#"
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: shop}
spec:
  hosts: [shop.example.com]
  ports: [{number: 80, name: http, protocol: HTTP}]
  resolution: STATIC
  endpoints:
  - {address: 127.0.0.1, ports: {http: 9}, labels: {version: v1}}
  - {address: 127.0.0.2, ports: {http: 9}, labels: {version: v2}}
"#;

/// Policy for [`SHOP_SERVICE`]: a connection pool and outlier detection, and `/api` routed to
/// the v1 subset (anything else gets the router's 404).
const SHOP_POLICY: &str = r#"
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: shop}
spec:
  host: shop.example.com
  trafficPolicy:
    connectionPool:
      tcp: {maxConnections: 100}
      http: {http1MaxPendingRequests: 100, http2MaxRequests: 1000}
    outlierDetection:
      consecutive5xxErrors: 5
      interval: 10s
      baseEjectionTime: 30s
      maxEjectionPercent: 50
  subsets:
  - {name: v1, labels: {version: v1}}
  - {name: v2, labels: {version: v2}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: shop}
spec:
  hosts: [shop.example.com]
  http:
  - name: api
    match: [{uri: {prefix: /api}}]
    route: [{destination: {host: shop.example.com, subset: v1}}]
    fault: {abort: {httpStatus: 503, percentage: {value: 0}}}
    mirror: {host: shop.example.com, subset: v2}
    mirrorPercentage: {value: 0}
"#;

/// A manifests directory of `files`, one manifest each.
fn manifests(files: &[&str]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for (i, yaml) in files.iter().enumerate() {
        std::fs::write(dir.path().join(format!("{i}.yaml")), yaml).unwrap();
    }
    dir
}

const PLUGIN_CHAIN: [&str; 4] = ["router", "fault", "mirror", "circuit-breaker"];

#[test]
fn manifests_against_a_manifests_baseline() {
    let with_policy = manifests(&[SHOP_SERVICE, SHOP_POLICY]);
    let without = manifests(&[SHOP_SERVICE]);
    let plugins = plugins_dir();
    let (a, b) = (
        with_policy.path().to_str().unwrap(),
        without.path().to_str().unwrap(),
    );
    let baseline = format!("manifests:{b}");
    let r = report(&[
        "--manifests",
        a,
        "--baseline",
        &baseline,
        "--plugins",
        plugins.path().to_str().unwrap(),
        "-H",
        "host:shop.example.com",
        "--path",
        "/api/items",
        "--requests-count",
        "300",
        "--rounds",
        "3",
    ]);

    // Both chains named by their directory, and no diagnostics about either. The policy's
    // route carries a fault and a mirror and its cluster a breaker: the four plugins of the
    // `outbound` listener. The service alone needs only the router (for requests the proxy
    // has no route for), which the requests here do not go through.
    assert_eq!(r["chain"]["label"], format!("{a}#outbound"), "{r}");
    assert_eq!(r["baseline"]["label"], format!("{b}#outbound"), "{r}");
    assert_eq!(r["chain"]["filters"], serde_json::json!(PLUGIN_CHAIN));
    assert_eq!(r["baseline"]["filters"], serde_json::json!(["router"]));
    assert!(r["chain"].get("warnings").is_none(), "{r}");
    assert!(r["baseline"].get("warnings").is_none(), "{r}");

    let filters = r["filters"].as_array().unwrap();
    assert_eq!(filters.len(), 4, "{r}");
    for (position, name) in PLUGIN_CHAIN.iter().enumerate() {
        let f = filters.iter().find(|f| f["name"] == *name).unwrap();
        assert_eq!(f["position"], position, "{f}");
        assert!(num(&f["mean_ns"]) > 0.0, "{f}");
        assert!(num(&f["p50_ns"]) > 0.0, "{f}");
        assert!(num(&f["p99_ns"]) >= num(&f["p50_ns"]), "{f}");
        assert!(num(&f["share_of_chain"]) > 0.0, "{f}");
        assert!(!f["callbacks"].as_array().unwrap().is_empty(), "{f}");
    }

    let ip = &r["in_process"];
    check_latency(&ip["chain"], 300);
    check_latency(&ip["baseline"], 300);
    // Both route every request: the chain to the v1 subset, the baseline to the service.
    assert_eq!(
        ip["chain"]["outcomes"],
        serde_json::json!({"upstream": 300})
    );
    assert_eq!(
        ip["baseline"]["outcomes"],
        serde_json::json!({"upstream": 300})
    );
    assert_eq!(ip["chain"]["round_means_ns"].as_array().unwrap().len(), 3);
    assert!(num(&ip["comparison"]["ratio"]) > 0.0);
    let verdict = ip["comparison"]["verdict"].as_str().unwrap();
    assert!(
        ["slower", "faster", "no significant difference"].contains(&verdict),
        "{verdict:?}"
    );
    assert!(r["through_proxy"].is_null());
}

#[test]
fn a_chain_from_manifests_through_the_proxy() {
    let dir = manifests(&[SHOP_SERVICE, SHOP_POLICY]);
    let plugins = plugins_dir();
    let r = report(&[
        "--manifests",
        dir.path().to_str().unwrap(),
        "--plugins",
        plugins.path().to_str().unwrap(),
        "-H",
        "host:shop.example.com",
        "--path",
        "/api/items",
        "--response-body-size",
        "128",
        "--through-proxy",
        "--connections",
        "2",
        "--requests-count",
        "200",
        "--rounds",
        "2",
    ]);
    assert_eq!(r["chain"]["filters"], serde_json::json!(PLUGIN_CHAIN));
    assert_eq!(
        r["in_process"]["chain"]["outcomes"],
        serde_json::json!({"upstream": 200})
    );
    let p = &r["through_proxy"];
    assert_eq!(p["connections"], 2, "{p}");
    check_latency(&p["chain"], 200);
    check_latency(&p["baseline"], 200);
    // Every request got the upstream's 200: the proxy's routes from the manifests matched the
    // requests (unmatched ones get the router's 404), and none failed.
    assert_eq!(
        p["chain"]["outcomes"],
        serde_json::json!({"200": 200}),
        "{p}"
    );
    assert_eq!(
        p["baseline"]["outcomes"],
        serde_json::json!({"200": 200}),
        "{p}"
    );
    assert!(num(&p["comparison"]["ratio"]) > 0.0);
    assert!(p["comparison"]["verdict"].is_string());
}

#[test]
fn a_manifests_baseline_through_the_proxy_has_its_own_clusters() {
    // The baseline routes to the v1 subset, a cluster the chain's manifests do not have.
    let chain = manifests(&[SHOP_SERVICE]);
    let with_policy = manifests(&[SHOP_SERVICE, SHOP_POLICY]);
    let plugins = plugins_dir();
    let baseline = format!("manifests:{}", with_policy.path().display());
    let r = report(&[
        "--manifests",
        chain.path().to_str().unwrap(),
        "--baseline",
        &baseline,
        "--plugins",
        plugins.path().to_str().unwrap(),
        "-H",
        "host:shop.example.com",
        "--path",
        "/api/items",
        "--through-proxy",
        "--connections",
        "2",
        "--requests-count",
        "100",
        "--rounds",
        "2",
    ]);
    let p = &r["through_proxy"];
    assert_eq!(
        p["chain"]["outcomes"],
        serde_json::json!({"200": 100}),
        "{p}"
    );
    assert_eq!(
        p["baseline"]["outcomes"],
        serde_json::json!({"200": 100}),
        "{p}"
    );
}

#[test]
fn answers_from_the_proxy_itself_are_called_out() {
    // The proxy routes only /api: requests for / get its own 404, which is not the upstream's
    // cost; the command still measures them but says so.
    let dir = tempfile::tempdir().unwrap();
    let yaml = format!(
        r#"
listeners:
- name: ingress
  address: "127.0.0.1:0"
  http_filters:
  - {{name: noop, url: "{NOOP}"}}
  virtual_hosts:
  - name: all
    domains: ["*"]
    routes:
    - match: {{prefix: /api}}
      cluster: upstream
clusters:
- name: upstream
  endpoints: ["127.0.0.1:9"]
"#
    );
    let config = dir.path().join("proxy.yaml");
    std::fs::write(&config, yaml).unwrap();
    let config = config.display().to_string();
    let out = wasmesh(&[
        "bench",
        "--json",
        "--config",
        &config,
        "--path",
        "/",
        "--through-proxy",
        "--connections",
        "1",
        "--requests-count",
        "100",
        "--rounds",
        "2",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    for side in ["chain", "baseline"] {
        assert!(
            stderr.contains(&format!(
                "warning: through the proxy, 100 of the {side}'s 100 requests did not reach the \
                 upstream (100 answered 404)"
            )),
            "{stderr}"
        );
    }
    let r: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(r["through_proxy"]["chain"]["outcomes"]["404"], 100, "{r}");
}
