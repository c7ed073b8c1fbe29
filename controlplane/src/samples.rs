//! Sample manifests: Bookinfo and httpbin services rendered for given addresses (so tests can
//! point them at servers bound on `127.0.0.1:0`), and the VirtualServices and DestinationRules
//! of Istio's traffic management tasks (as Istio ships them, hosts as short names).
//!
//! Services are ServiceEntries for `<name>.default.svc.cluster.local` port 9080 (httpbin: 8000)
//! with a `workloadSelector`, and one WorkloadEntry per version (`app`, `version` labels) whose
//! `ports.http` is the server's port.

use std::fmt::Write as _;
use std::net::SocketAddr;

/// `destination-rule-all.yaml`: subsets v1.. for productpage, reviews, ratings, details.
pub const DESTINATION_RULE_ALL: &str = include_str!("../samples/destination-rule-all.yaml");
/// Request routing: every service to v1.
pub const VIRTUAL_SERVICE_ALL_V1: &str = include_str!("../samples/virtual-service-all-v1.yaml");
/// Request routing: `end-user: jason` to reviews v2, the rest to v1.
pub const VIRTUAL_SERVICE_REVIEWS_TEST_V2: &str =
    include_str!("../samples/virtual-service-reviews-test-v2.yaml");
/// Traffic shifting: reviews v1 50%, v3 50%.
pub const VIRTUAL_SERVICE_REVIEWS_50_V3: &str =
    include_str!("../samples/virtual-service-reviews-50-v3.yaml");
/// Traffic shifting: reviews v1 80%, v2 20%.
pub const VIRTUAL_SERVICE_REVIEWS_80_20: &str =
    include_str!("../samples/virtual-service-reviews-80-20.yaml");
/// Fault injection: a 7s delay of ratings for `end-user: jason`.
pub const VIRTUAL_SERVICE_RATINGS_TEST_DELAY: &str =
    include_str!("../samples/virtual-service-ratings-test-delay.yaml");
/// Fault injection: ratings answers 500 to `end-user: jason`.
pub const VIRTUAL_SERVICE_RATINGS_TEST_ABORT: &str =
    include_str!("../samples/virtual-service-ratings-test-abort.yaml");
/// Mirroring: httpbin subsets v1 and v2.
pub const HTTPBIN_DESTINATION_RULE: &str = include_str!("../samples/httpbin-destination-rule.yaml");
/// Mirroring: httpbin to v1, mirrored to v2 (100%).
pub const HTTPBIN_MIRROR: &str = include_str!("../samples/httpbin-mirror.yaml");
/// Circuit breaking: httpbin with maxConnections 1, http1MaxPendingRequests 1,
/// maxRequestsPerConnection 1 and outlier detection.
pub const HTTPBIN_CIRCUIT_BREAKER: &str = include_str!("../samples/httpbin-circuit-breaker.yaml");

/// Where each Bookinfo workload listens.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BookinfoEndpoints {
    pub productpage: SocketAddr,
    pub details: SocketAddr,
    pub ratings: SocketAddr,
    pub reviews_v1: SocketAddr,
    pub reviews_v2: SocketAddr,
    pub reviews_v3: SocketAddr,
}

/// Where each httpbin version listens.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HttpbinEndpoints {
    pub v1: SocketAddr,
    pub v2: SocketAddr,
}

/// The Bookinfo port (productpage, details, ratings, reviews).
pub const BOOKINFO_PORT: u16 = 9080;
/// The httpbin port.
pub const HTTPBIN_PORT: u16 = 8000;

/// ServiceEntries and WorkloadEntries for Bookinfo: productpage, details and ratings v1,
/// reviews v1, v2 and v3, in namespace `default`.
pub fn bookinfo(e: &BookinfoEndpoints) -> String {
    let mut out = String::new();
    for app in ["productpage", "details", "ratings", "reviews"] {
        service(&mut out, app, BOOKINFO_PORT);
    }
    workload(&mut out, "productpage", "v1", e.productpage);
    workload(&mut out, "details", "v1", e.details);
    workload(&mut out, "ratings", "v1", e.ratings);
    workload(&mut out, "reviews", "v1", e.reviews_v1);
    workload(&mut out, "reviews", "v2", e.reviews_v2);
    workload(&mut out, "reviews", "v3", e.reviews_v3);
    out
}

/// A ServiceEntry and WorkloadEntries for httpbin v1 and v2, in namespace `default`.
pub fn httpbin(e: &HttpbinEndpoints) -> String {
    let mut out = String::new();
    service(&mut out, "httpbin", HTTPBIN_PORT);
    workload(&mut out, "httpbin", "v1", e.v1);
    workload(&mut out, "httpbin", "v2", e.v2);
    out
}

/// A ServiceEntry for `app` on `port` (HTTP) in namespace `default`, selecting the workloads
/// labelled `app: <app>`, as one YAML document (with its `---`).
pub fn service_entry(app: &str, port: u16) -> String {
    let mut out = String::new();
    service(&mut out, app, port);
    out
}

fn service(out: &mut String, app: &str, port: u16) {
    let _ = write!(
        out,
        "---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata:
  name: {app}
  namespace: default
spec:
  hosts:
  - {app}.default.svc.cluster.local
  location: MESH_INTERNAL
  ports:
  - number: {port}
    name: http
    protocol: HTTP
  resolution: STATIC
  workloadSelector:
    labels:
      app: {app}
"
    );
}

fn workload(out: &mut String, app: &str, version: &str, addr: SocketAddr) {
    let _ = write!(
        out,
        "---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata:
  name: {app}-{version}
  namespace: default
spec:
  address: \"{ip}\"
  ports:
    http: {port}
  labels:
    app: {app}
    version: {version}
",
        ip = addr.ip(),
        port = addr.port()
    );
}

/// A reviews VirtualService as a canary rollout writes it: `percent` to `subset`, the rest to
/// v1 (the task's 80/20 and 50/50 files are two steps of it).
pub fn reviews_canary(subset: &str, percent: u32) -> String {
    format!(
        "apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: reviews}}
spec:
  hosts: [reviews]
  http:
  - route:
    - destination: {{host: reviews, subset: v1}}
      weight: {}
    - destination: {{host: reviews, subset: {subset}}}
      weight: {percent}
",
        100 - percent
    )
}
