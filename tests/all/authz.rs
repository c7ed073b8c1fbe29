//! AuthorizationPolicy, enforced by the authorization plugin on sidecars' inbound listeners:
//! Istio's authorization tasks (HTTP traffic: allow-nothing, then allow by method and by the
//! caller's principal; deny by path), driven with curl through real sidecars that call each
//! other over mTLS, with the outcomes Istio's docs give.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::support::sidecars::{
    ControlPlane, Process, Sidecar, SidecarSpec, services, shared_cache, write,
};
use crate::support::*;

/// `(status, body)` of `method path` sent to `host` through `from`'s outbound listener.
fn call(from: &Sidecar, host: &str, method: &str, path: &str) -> (String, String) {
    let out = Command::new("curl")
        .args([
            "-sS",
            "--path-as-is",
            "-X",
            method,
            "-H",
            &format!("host: {host}"),
        ])
        .args(["-w", "\n%{http_code}"])
        .arg(format!("http://{}{path}", from.outbound))
        .output()
        .expect("curl is installed (deploy/setup.sh)");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, status) = text.rsplit_once('\n').unwrap_or(("", &text));
    (status.to_owned(), body.to_owned())
}

async fn until(what: &str, mut check: impl FnMut() -> bool) {
    eventually(what, Duration::from_secs(20), || {
        let ok = check();
        async move { ok }
    })
    .await;
}

/// The access log lines a sidecar wrote, as JSON.
fn access_log(path: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn istio_authorization_tasks_allow_nothing_allow_by_principal_and_method_deny_by_path() {
    let dir = tempfile::tempdir().unwrap();
    let manifests = dir.path().join("manifests");
    std::fs::create_dir(&manifests).unwrap();
    write(
        &manifests,
        "services.yaml",
        &services(&[("productpage", 9080), ("details", 9080)]),
    );
    let cp = ControlPlane::start(&manifests, &dir.path().join("data"), "127.0.0.1:0");
    let cache = shared_cache();
    let productpage_app = Upstream::echo("productpage-v1").await;
    let details_app = Upstream::echo("details-v1").await;
    let start = |name: &str, app: &str, addr: Option<std::net::SocketAddr>| -> (Sidecar, PathBuf) {
        let spec = SidecarSpec {
            name,
            labels: &[],
            app: addr.map(|a| (9080, a)),
            cache: &cache,
            outbound: "127.0.0.1:0",
        };
        let log = dir.path().join(format!("{name}.log"));
        let mut cmd = Sidecar::command(&cp.address, &spec);
        cmd.args(["--service-account", &format!("bookinfo-{app}")])
            .args(["--label", &format!("app={app}")])
            .arg("--access-log")
            .arg(&log);
        (Sidecar::ready(Process::spawn(name, cmd)), log)
    };
    let (productpage, _) = start("productpage-v1", "productpage", Some(productpage_app.addr));
    let (details, details_log) = start("details-v1", "details", Some(details_app.addr));
    let (sleep, _) = start("sleep", "sleep", None);

    // No policy: everything is allowed.
    until("productpage answers", || {
        call(&sleep, "productpage", "GET", "/productpage").0 == "200"
    })
    .await;

    // allow-nothing: an ALLOW policy without rules denies every request in the namespace.
    write(
        &manifests,
        "allow-nothing.yaml",
        "apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: allow-nothing, namespace: default}
spec: {}
",
    );
    until("allow-nothing denies", || {
        call(&sleep, "productpage", "GET", "/productpage").0 == "403"
    })
    .await;
    assert_eq!(
        call(&sleep, "productpage", "GET", "/productpage"),
        ("403".into(), "RBAC: access denied".into())
    );
    until("details denies too", || {
        call(&productpage, "details", "GET", "/details/0").0 == "403"
    })
    .await;
    // The denial is in the access log with Envoy's response code details.
    until("the denial is logged", || {
        access_log(&details_log).iter().any(|l| {
            l["response_code"] == 403
                && l["response_code_details"] == "rbac_access_denied_matched_policy[none]"
                && l["downstream_peer_uri_san"]
                    == "spiffe://cluster.local/ns/default/sa/bookinfo-productpage"
        })
    })
    .await;

    // Allow GET on productpage from anyone, and GET on details from productpage only.
    write(
        &manifests,
        "viewers.yaml",
        "apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: productpage-viewer, namespace: default}
spec:
  selector: {matchLabels: {app: productpage}}
  action: ALLOW
  rules:
  - to:
    - operation:
        methods: [GET]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: details-viewer, namespace: default}
spec:
  selector: {matchLabels: {app: details}}
  action: ALLOW
  rules:
  - from:
    - source:
        principals: [cluster.local/ns/default/sa/bookinfo-productpage]
    to:
    - operation:
        methods: [GET]
",
    );
    until("productpage-viewer allows GET", || {
        call(&sleep, "productpage", "GET", "/productpage").0 == "200"
    })
    .await;
    until("details-viewer allows productpage", || {
        call(&productpage, "details", "GET", "/details/0").0 == "200"
    })
    .await;
    assert_eq!(call(&sleep, "productpage", "POST", "/productpage").0, "403");
    assert_eq!(call(&sleep, "details", "GET", "/details/0").0, "403");
    assert_eq!(
        call(&productpage, "details", "DELETE", "/details/0").0,
        "403"
    );
    // Plaintext straight to the details sidecar (PERMISSIVE) carries no principal.
    let out = Command::new("curl")
        .args(["-sS", "-o", "/dev/null", "-w", "%{http_code}"])
        .arg(format!("http://{}/details/0", details.inbound.unwrap()))
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "403");

    // A mesh-wide DENY on a path comes before any ALLOW, and judges the normalized path.
    write(
        &manifests,
        "deny-secret.yaml",
        "apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-secret, namespace: istio-system}
spec:
  action: DENY
  rules:
  - to:
    - operation:
        paths: [/secret/*]
",
    );
    until("deny-secret denies", || {
        call(&productpage, "details", "GET", "/secret/key").0 == "403"
    })
    .await;
    for path in ["/details/../secret/key", "/%73ecret/key", "/./secret/key"] {
        assert_eq!(
            call(&productpage, "details", "GET", path).0,
            "403",
            "{path} is /secret/key"
        );
    }
    until("the DENY is logged", || {
        access_log(&details_log).iter().any(|l| {
            l["response_code_details"]
                == "rbac_access_denied_matched_policy[ns[istio-system]-policy[deny-secret]-rule[0]]"
        })
    })
    .await;
    let (status, body) = call(&productpage, "details", "GET", "/details/./1");
    assert_eq!(status, "200");
    let echo: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        echo["uri"], "/details/1",
        "the workload gets the normalized path"
    );

    // With the ALLOW policies gone every request is allowed again, but the DENY stays.
    std::fs::remove_file(manifests.join("allow-nothing.yaml")).unwrap();
    std::fs::remove_file(manifests.join("viewers.yaml")).unwrap();
    until("everything is allowed again", || {
        call(&sleep, "details", "GET", "/details/0").0 == "200"
    })
    .await;
    assert_eq!(call(&sleep, "details", "GET", "/secret/key").0, "403");
}
