//! Transparent sidecars, pod-shaped: each workload and its sidecar in a network namespace of
//! its own on a bridge (`support::netns`), `wasmesh-proxy init` redirecting the pod's traffic,
//! the sidecar running as uid 1337 with `--pod-ip`. The workloads are unmodified: they call
//! plain hostnames and ports, and listen on their own ports. Between the sidecars it is mTLS
//! (the mesh is STRICT, so a plaintext caller outside the mesh is refused at the same port);
//! what is not the mesh's passes through as TCP, both ways, and inbound under the workload's
//! PeerAuthentication: STRICT takes only mTLS on the ports no service declares too.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use crate::support::ca_client::root_signed_svid;
use crate::support::netns::{Node, Pod};
use crate::support::sidecars::{ControlPlane, Process, Sidecar, write};
use crate::support::*;

/// The address `reviews` resolves to in the pods: a virtual IP, as a Kubernetes Service's.
const REVIEWS_VIP: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 10);
/// The address of `reviews-tcp`, a TCP service of the same workload.
const REVIEWS_TCP_VIP: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 11);

fn init(pod: &Pod) {
    let out = pod.command(proxy_binary()).arg("init").output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Starts a transparent sidecar in `pod` as uid 1337 and waits until it serves.
fn sidecar(pod: &Pod, cp: &str, cache: &std::path::Path, app: &str, inbound: &[&str]) -> Sidecar {
    let mut cmd = pod.command_as(1337, 1337, proxy_binary());
    cmd.args(["--control-plane", cp, "--node", &format!("{app}-v1")])
        .args(["--pod-ip", &pod.ip.to_string(), "--workers", "1"])
        .args(["--service-account", &format!("bookinfo-{app}")])
        .args(["--label", &format!("app={app}")])
        .arg("--cache-dir")
        .arg(cache);
    for port in inbound {
        cmd.args(["--inbound", &format!("{port}=127.0.0.1:{port}")]);
    }
    Sidecar::ready(Process::spawn(&format!("{app}-sidecar"), cmd))
}

/// `curl` in `pod` (as root, which iptables redirect like any workload user): status and body.
fn curl(pod: &Pod, url: &str) -> (String, String) {
    let out = pod
        .command("curl")
        .args(["-sS", "--max-time", "5", "-w", "\n%{http_code}", url])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, status) = text.rsplit_once('\n').unwrap_or(("", &text));
    (status.to_owned(), body.to_owned())
}

/// Sends `line` over a TCP connection made in `pod` and reads the answer until it closes.
fn tcp_exchange_in(pod: &Pod, to: SocketAddr, line: &[u8]) -> std::io::Result<Vec<u8>> {
    pod.enter(|| tcp_exchange(to, line))?
}

/// `tcpdump` on a pod's `eth0`, writing what `filter` matches to a file.
struct Capture {
    child: std::process::Child,
    file: std::path::PathBuf,
}

impl Capture {
    fn start(pod: &Pod, filter: &str, file: &std::path::Path) -> Capture {
        let mut child = pod
            .command("tcpdump")
            .args([
                "-i",
                "eth0",
                "--immediate-mode",
                "-Z",
                "root",
                "-U",
                "-s",
                "0",
                "-w",
            ])
            .arg(file)
            .arg(filter)
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("tcpdump is installed (deploy/setup.sh)");
        // It says so on stderr once it captures.
        let mut stderr = std::io::BufReader::new(child.stderr.take().unwrap());
        let mut line = String::new();
        while std::io::BufRead::read_line(&mut stderr, &mut line).unwrap_or(0) > 0 {
            if line.contains("listening on") {
                break;
            }
            line.clear();
        }
        std::thread::spawn(move || std::io::copy(&mut stderr, &mut std::io::sink()));
        Capture {
            child,
            file: file.to_owned(),
        }
    }

    /// Stops capturing; the raw capture file.
    fn stop(mut self) -> Vec<u8> {
        // SIGINT makes tcpdump flush and exit.
        let _ = std::process::Command::new("kill")
            .args(["-INT", &self.child.id().to_string()])
            .status();
        let _ = self.child.wait();
        std::fs::read(&self.file).unwrap_or_default()
    }
}

/// A TCP server in `pod` that speaks first: `greeting`, then it closes (as a server-first
/// protocol such as MySQL's or SMTP's greets).
fn tcp_greeter(pod: &Pod, port: u16, greeting: &'static str) -> std::thread::JoinHandle<()> {
    let listener = pod.listen(("0.0.0.0", port)).unwrap();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut s) = stream else { return };
            let _ = s.write_all(greeting.as_bytes());
        }
    })
}

/// A TCP server in `pod` that answers each connection with `greeting` and what it received.
fn tcp_echo(pod: &Pod, port: u16, greeting: &'static str) -> std::thread::JoinHandle<()> {
    let listener = pod.listen(("0.0.0.0", port)).unwrap();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut s) = stream else { return };
            let mut got = Vec::new();
            let _ = s.read_to_end(&mut got);
            let _ = s.write_all(greeting.as_bytes());
            let _ = s.write_all(&got);
        }
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pods_call_each_other_by_name_through_transparent_sidecars_over_mtls() {
    let mut node = Node::new();
    let productpage = node.pod("productpage");
    let reviews = node.pod("reviews");
    let outside = node.pod("outside");
    for pod in [&productpage, &reviews] {
        pod.hosts(&[
            ("reviews", REVIEWS_VIP),
            ("reviews-tcp", REVIEWS_TCP_VIP),
            ("outside", outside.ip),
        ])
        .unwrap();
    }

    let dir = tempfile::tempdir().unwrap();
    let manifests = dir.path().join("manifests");
    std::fs::create_dir(&manifests).unwrap();
    write(
        &manifests,
        "mesh.yaml",
        &format!(
            "apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: reviews}}
spec:
  hosts: [reviews.default.svc.cluster.local]
  addresses: [{REVIEWS_VIP}]
  location: MESH_INTERNAL
  ports: [{{number: 9080, name: http, protocol: HTTP}}]
  resolution: STATIC
  workloadSelector: {{labels: {{app: reviews}}}}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: reviews-tcp}}
spec:
  hosts: [reviews-tcp.default.svc.cluster.local]
  addresses: [{REVIEWS_TCP_VIP}]
  location: MESH_INTERNAL
  ports: [{{number: 7070, name: tcp, protocol: TCP}}]
  resolution: STATIC
  workloadSelector: {{labels: {{app: reviews}}}}
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {{name: default, namespace: istio-system}}
spec:
  mtls: {{mode: STRICT}}
"
        ),
    );
    let cp = ControlPlane::start(
        &manifests,
        &dir.path().join("data"),
        &format!("{}:0", node.gateway()),
    );
    // Sidecars run as 1337: their cache must be theirs to write.
    let cache = dir.path().join("cache");
    std::fs::create_dir(&cache).unwrap();
    std::fs::set_permissions(&cache, std::os::unix::fs::PermissionsExt::from_mode(0o777)).unwrap();

    // The workloads: reviews serves HTTP on 9080 and raw TCP on 7070 (a port no service
    // declares); outside, not in the mesh, serves HTTP on 8080 and raw TCP on 7070.
    let _reviews_app = Upstream::serve(
        tokio::net::TcpListener::from_std({
            let l = reviews.listen(("0.0.0.0", 9080)).unwrap();
            l.set_nonblocking(true).unwrap();
            l
        })
        .unwrap(),
        |req| echo_response("reviews-v1", req),
    );
    let _outside_app = Upstream::serve(
        tokio::net::TcpListener::from_std({
            let l = outside.listen(("0.0.0.0", 8080)).unwrap();
            l.set_nonblocking(true).unwrap();
            l
        })
        .unwrap(),
        |req| echo_response("outside", req),
    );
    tcp_echo(&reviews, 7070, "reviews-tcp:");
    tcp_greeter(&reviews, 7071, "reviews-greeting");
    tcp_echo(&outside, 7070, "outside-tcp:");

    init(&productpage);
    init(&reviews);
    let _reviews_sidecar = sidecar(&reviews, &cp.address, &cache, "reviews", &["9080"]);
    let _productpage_sidecar = sidecar(&productpage, &cp.address, &cache, "productpage", &[]);

    // productpage calls reviews by name and port, as it would without a mesh: its sidecar
    // routes it to reviews' pod over mTLS, whose sidecar tells the workload who called. What
    // leaves productpage's pod for reviews' port is captured on its interface.
    let capture = Capture::start(
        &productpage,
        &format!("tcp and dst host {} and dst port 9080", reviews.ip),
        &dir.path().join("wire.pcap"),
    );
    let mut echo = serde_json::Value::Null;
    eventually(
        "productpage reaches reviews through both sidecars",
        Duration::from_secs(30),
        || {
            let (status, body) = curl(&productpage, "http://reviews:9080/reviews/1");
            let ok = status == "200";
            if ok {
                echo = serde_json::from_str(&body).unwrap_or_default();
            }
            async move { ok }
        },
    )
    .await;
    assert_eq!(echo["server"], "reviews-v1", "{echo}");
    let xfcc = echo["headers"]["x-forwarded-client-cert"]
        .as_str()
        .unwrap_or_default();
    assert!(
        xfcc.contains("URI=spiffe://cluster.local/ns/default/sa/bookinfo-productpage"),
        "{echo}"
    );
    assert!(
        xfcc.starts_with("By=spiffe://cluster.local/ns/default/sa/bookinfo-reviews"),
        "{echo}"
    );
    // On the wire: a TLS ClientHello naming Istio's SNI for the cluster, and never the
    // request in the clear.
    let wire = capture.stop();
    let has = |needle: &[u8]| wire.windows(needle.len()).any(|w| w == needle);
    assert!(
        has(b"outbound_.9080_._.reviews.default.svc.cluster.local"),
        "no ClientHello with Istio's SNI in {} captured bytes",
        wire.len()
    );
    assert!(
        !has(b"GET /reviews/1"),
        "the request crossed the wire in the clear"
    );

    // A caller outside the mesh, plaintext to the same port of reviews' pod: refused (STRICT),
    // so what productpage's sidecar sent there was mTLS.
    let (status, _) = curl(&outside, &format!("http://{}:9080/reviews/1", reviews.ip));
    assert_ne!(status, "200");

    // Outbound to a destination the mesh does not know passes through: HTTP and raw TCP.
    let (status, body) = curl(&productpage, "http://outside:8080/anything");
    assert_eq!(status, "200", "{body}");
    let echo: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(echo["server"], "outside");
    let answer =
        tcp_exchange_in(&productpage, SocketAddr::from((outside.ip, 7070)), b"ping").unwrap();
    assert_eq!(answer, b"outside-tcp:ping");

    // Inbound to a port of reviews no service declares passes through to the workload under
    // the workload's mode, as Istio's inbound passthrough chains: STRICT refuses plaintext
    // there too...
    let refused = tcp_exchange_in(&outside, SocketAddr::from((reviews.ip, 7070)), b"hello");
    assert!(
        refused.as_ref().map_or(true, Vec::is_empty),
        "plaintext passed through a STRICT sidecar: {refused:?}"
    );
    // ...and takes mTLS with a certificate of the mesh, terminated by the sidecar, whose
    // content reaches the workload as plain TCP.
    let (cert, key) = root_signed_svid(
        &dir.path().join("data/ca"),
        "spiffe://cluster.local/ns/default/sa/outside",
        dir.path(),
        false,
    );
    let out = outside
        .command("openssl")
        .args(["s_client", "-connect", &format!("{}:7071", reviews.ip)])
        .arg("-cert")
        .arg(&cert)
        .arg("-key")
        .arg(&key)
        .arg("-CAfile")
        .arg(dir.path().join("data/ca/root-cert.pem"))
        .args(["-verify_return_error", "-ign_eof"])
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        said.contains("Verify return code: 0 (ok)") && said.contains("reviews-greeting"),
        "{said}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // A TCP service of the mesh, by its address: productpage's sidecar proxies it as TCP to
    // reviews' pod over mTLS (reviews' STRICT sidecar takes nothing else), which carries it
    // to the workload. On the wire, Istio's SNI for the TCP cluster and never the payload.
    let capture = Capture::start(
        &productpage,
        &format!("tcp and dst host {} and dst port 7070", reviews.ip),
        &dir.path().join("tcp-wire.pcap"),
    );
    let answer = tcp_exchange_in(
        &productpage,
        SocketAddr::from((REVIEWS_TCP_VIP, 7070)),
        b"ping-over-the-mesh",
    )
    .unwrap();
    assert_eq!(answer, b"reviews-tcp:ping-over-the-mesh");
    let wire = capture.stop();
    let has = |needle: &[u8]| wire.windows(needle.len()).any(|w| w == needle);
    assert!(
        has(b"outbound_.7070_._.reviews-tcp.default.svc.cluster.local"),
        "no ClientHello with Istio's SNI in {} captured bytes",
        wire.len()
    );
    assert!(
        !has(b"ping-over-the-mesh"),
        "TCP crossed the wire in the clear"
    );

    // What the sidecars would loop on is refused: a client straight at 15001 goes nowhere.
    let looped = tcp_exchange_in(
        &productpage,
        SocketAddr::from((productpage.ip, 15001)),
        b"x",
    );
    assert!(looped.is_err() || looped.unwrap().is_empty());
}
