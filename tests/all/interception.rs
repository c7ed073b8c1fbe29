//! `wasmesh-proxy init` for real: the rules it installs in a pod (a network namespace on a
//! bridge, `support::netns`) redirect that pod's TCP traffic as Istio's do. Small servers in
//! the pods answer each connection with who they are, the address that accepted it and the
//! original destination when NAT changed it (`SO_ORIGINAL_DST`, as the sidecar will read it);
//! clients are bash's `/dev/tcp` run in the pods as chosen users. Needs root.

use std::time::Duration;

use tokio::io::AsyncWriteExt;
use wasmesh_proxy::original_dst::original_dst;

use crate::support::netns::{Node, Pod};
use crate::support::proxy_binary;

/// A node with two pods: `app`, which `init` (with `args`) set up, and `other`, left alone,
/// which `app` knows by name.
fn pods(args: &[&str]) -> (Node, Pod, Pod) {
    let mut node = Node::new();
    let app = node.pod("app");
    let other = node.pod("other");
    app.hosts(&[("other", other.ip)]).unwrap();
    init(&app, args);
    (node, app, other)
}

/// Runs `wasmesh-proxy init ARGS` in the pod, as root; its stdout. Panics if it fails.
fn init(pod: &Pod, args: &[&str]) -> String {
    let out = pod
        .command(proxy_binary())
        .arg("init")
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "init {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// The pod's nat table, as `iptables-save` prints it, without its dated comments.
fn nat_table(pod: &Pod) -> String {
    let out = pod
        .command("iptables-save")
        .args(["-t", "nat"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .filter(|l| !l.starts_with('#'))
        .map(|l| format!("{l}\n"))
        .collect()
}

/// Serves `addr` in the pod until dropped: every connection is answered with one line,
/// `WHO LOCAL_ADDRESS [original ORIGINAL_DESTINATION]`, then closed.
fn answer(pod: &Pod, addr: (std::net::IpAddr, u16), who: &'static str) -> Server {
    let listener = pod.listen(addr).unwrap();
    listener.set_nonblocking(true).unwrap();
    let listener = tokio::net::TcpListener::from_std(listener).unwrap();
    Server(tokio::spawn(async move {
        loop {
            let Ok((mut stream, _)) = listener.accept().await else {
                continue;
            };
            let local = stream.local_addr().unwrap();
            let mut line = format!("{who} {local}");
            // Without NAT the kernel answers with the local address, or ENOENT.
            if let Ok(dst) = original_dst(&stream)
                && dst != local
            {
                line += &format!(" original {dst}");
            }
            let _ = stream.write_all(format!("{line}\n").as_bytes()).await;
        }
    }))
}

struct Server(tokio::task::JoinHandle<()>);

impl Drop for Server {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Connects from `pod` to `host:port` as `user` (uid, gid; root if `None`) and returns the
/// line the server that accepted the connection answered.
async fn call(pod: &Pod, user: Option<(u32, u32)>, host: &str, port: u16) -> String {
    let script = format!("exec 3<>/dev/tcp/{host}/{port} && read -r line <&3 && echo \"$line\"");
    let mut command = match user {
        Some((uid, gid)) => pod.command_as(uid, gid, "bash"),
        None => pod.command("bash"),
    };
    command.args(["-c", &script]);
    let mut command = tokio::process::Command::from(command);
    command.kill_on_drop(true);
    let out = tokio::time::timeout(Duration::from_secs(10), command.output())
        .await
        .unwrap_or_else(|_| panic!("{host}:{port} from {} did not answer", pod.name))
        .unwrap();
    assert!(
        out.status.success(),
        "{host}:{port} from {} as {user:?}: {}",
        pod.name,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

/// The line a server answers a connection from the test process itself, on the host.
async fn call_from_host(addr: std::net::SocketAddr) -> String {
    use tokio::io::AsyncReadExt;
    let read = async {
        let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        let mut line = String::new();
        stream.read_to_string(&mut line).await.unwrap();
        line.trim().to_owned()
    };
    tokio::time::timeout(Duration::from_secs(10), read)
        .await
        .unwrap_or_else(|_| panic!("{addr} from the host did not answer"))
}

const APP_USER: Option<(u32, u32)> = Some((1000, 1000));
const SIDECAR_USER: Option<(u32, u32)> = Some((1337, 1337));

#[tokio::test]
async fn the_workloads_outbound_connections_land_on_15001() {
    let (_node, app, other) = pods(&[]);
    let _sidecar = answer(&app, ("127.0.0.1".parse().unwrap(), 15001), "sidecar");
    let _other = answer(&other, (other.ip.into(), 8080), "other");

    assert_eq!(
        call(&app, APP_USER, "other", 8080).await,
        format!("sidecar 127.0.0.1:15001 original {}:8080", other.ip)
    );
    // Root is a workload user like any other.
    assert_eq!(
        call(&app, None, &other.ip.to_string(), 8080).await,
        format!("sidecar 127.0.0.1:15001 original {}:8080", other.ip)
    );
}

#[tokio::test]
async fn the_sidecars_own_connections_go_where_they_were_sent() {
    let (_node, app, other) = pods(&[]);
    let _sidecar = answer(&app, ("127.0.0.1".parse().unwrap(), 15001), "sidecar");
    let _other = answer(&other, (other.ip.into(), 8080), "other");

    let reached = format!("other {}:8080", other.ip);
    assert_eq!(call(&app, SIDECAR_USER, "other", 8080).await, reached);
    // The sidecar's uid alone, or its gid alone, is enough.
    assert_eq!(call(&app, Some((1337, 1000)), "other", 8080).await, reached);
    assert_eq!(call(&app, Some((1000, 1337)), "other", 8080).await, reached);
}

#[tokio::test]
async fn inbound_connections_land_on_15006() {
    let (_node, app, other) = pods(&[]);
    let _sidecar = answer(&app, ("0.0.0.0".parse().unwrap(), 15006), "sidecar");
    let _app = answer(&app, (app.ip.into(), 9080), "app");

    let captured = format!("sidecar {0}:15006 original {0}:9080", app.ip);
    assert_eq!(
        call(&other, None, &app.ip.to_string(), 9080).await,
        captured
    );
    // From the node (the host, as a kubelet's probe would come) too.
    assert_eq!(call_from_host((app.ip, 9080).into()).await, captured);
}

#[tokio::test]
async fn excluded_inbound_ports_reach_the_workload() {
    let (_node, app, other) = pods(&["--exclude-inbound-ports", "9090"]);
    let _sidecar = answer(&app, ("0.0.0.0".parse().unwrap(), 15006), "sidecar");
    let _app = answer(&app, (app.ip.into(), 9090), "app");
    let _health = answer(&app, (app.ip.into(), 15021), "health");
    let app_ip = app.ip.to_string();

    // The flag's port, and one Istio always excludes.
    assert_eq!(
        call(&other, None, &app_ip, 9090).await,
        format!("app {app_ip}:9090")
    );
    assert_eq!(
        call(&other, None, &app_ip, 15021).await,
        format!("health {app_ip}:15021")
    );
    // The others are still captured.
    assert_eq!(
        call(&other, None, &app_ip, 9080).await,
        format!("sidecar {app_ip}:15006 original {app_ip}:9080")
    );
}

#[tokio::test]
async fn calls_to_the_pods_own_address_stay_on_lo_unless_the_sidecar_makes_them() {
    let (_node, app, _other) = pods(&[]);
    let _sidecar = answer(&app, ("0.0.0.0".parse().unwrap(), 15006), "sidecar");
    let _app = answer(&app, (app.ip.into(), 9080), "app");
    let app_ip = app.ip.to_string();

    // The workload calling itself by its address reaches itself.
    assert_eq!(
        call(&app, APP_USER, &app_ip, 9080).await,
        format!("app {app_ip}:9080")
    );
    // The sidecar forwarding to its own pod's address (a workload calling itself through a
    // service) comes back in through the inbound port (on 127.0.0.1: REDIRECT in OUTPUT).
    assert_eq!(
        call(&app, SIDECAR_USER, &app_ip, 9080).await,
        format!("sidecar 127.0.0.1:15006 original {app_ip}:9080")
    );
}

#[tokio::test]
async fn excluded_outbound_ports_and_ranges_are_not_redirected() {
    let mut node = Node::new();
    let app = node.pod("app");
    let other = node.pod("other");
    let third = node.pod("third");
    app.hosts(&[("other", other.ip), ("third", third.ip)])
        .unwrap();
    let excluded_range = format!("{}/32", other.ip);
    init(
        &app,
        &[
            "--exclude-outbound-ports",
            "8081",
            "--exclude-outbound-ip-ranges",
            &excluded_range,
        ],
    );
    let _sidecar = answer(&app, ("127.0.0.1".parse().unwrap(), 15001), "sidecar");
    let _other = answer(&other, (other.ip.into(), 8080), "other");
    let _third = answer(&third, (third.ip.into(), 8080), "third");
    let _third_8081 = answer(&third, (third.ip.into(), 8081), "third");

    assert_eq!(
        call(&app, APP_USER, "other", 8080).await,
        format!("other {}:8080", other.ip)
    );
    assert_eq!(
        call(&app, APP_USER, "third", 8081).await,
        format!("third {}:8081", third.ip)
    );
    assert_eq!(
        call(&app, APP_USER, "third", 8080).await,
        format!("sidecar 127.0.0.1:15001 original {}:8080", third.ip)
    );
}

#[test]
fn init_twice_gives_the_same_rules_and_cleanup_removes_them() {
    let mut node = Node::new();
    let pod = node.pod("app");
    let before = nat_table(&pod);

    init(&pod, &[]);
    let once = nat_table(&pod);
    init(&pod, &[]);
    assert_eq!(nat_table(&pod), once);
    for jump in [
        "-A PREROUTING -p tcp -j ISTIO_INBOUND\n",
        "-A OUTPUT -p tcp -j ISTIO_OUTPUT\n",
    ] {
        assert_eq!(once.matches(jump).count(), 1, "{jump} in\n{once}");
    }

    init(&pod, &["--cleanup"]);
    assert_eq!(nat_table(&pod), before);
    // Nothing left to remove is not an error.
    init(&pod, &["--cleanup"]);
    assert_eq!(nat_table(&pod), before);
}

#[test]
fn dry_run_prints_the_rules_and_changes_nothing() {
    let mut node = Node::new();
    let pod = node.pod("app");
    let before = nat_table(&pod);

    let rules = init(&pod, &["--dry-run", "--inbound-ports", "9080"]);
    assert!(rules.starts_with("*nat\n"), "{rules}");
    assert!(
        rules.contains("-A ISTIO_INBOUND -p tcp --dport 9080 -j ISTIO_IN_REDIRECT\n"),
        "{rules}"
    );
    assert!(rules.ends_with("COMMIT\n"), "{rules}");
    assert_eq!(nat_table(&pod), before);
}

#[test]
fn failures_say_why_and_leave_the_rules_as_they_were() {
    let mut node = Node::new();
    let pod = node.pod("app");
    let run = |args: &[&str]| {
        pod.command(proxy_binary())
            .arg("init")
            .args(args)
            .output()
            .unwrap()
    };

    let out = run(&["--exclude-inbound-ports", "15000,70000"]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        "error: --exclude-inbound-ports \"70000\": not a port (1-65535)\n"
    );
    let out = run(&["--outbound-ip-ranges", "10.0.0/8"]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        "error: --outbound-ip-ranges \"10.0.0/8\": not an IPv4 address or CIDR (a.b.c.d/n)\n"
    );

    // Another chain still jumps to ISTIO_OUTPUT: iptables refuses the whole cleanup.
    init(&pod, &[]);
    for args in [
        ["-N", "MINE"].as_slice(),
        &["-A", "MINE", "-j", "ISTIO_OUTPUT"],
    ] {
        let out = pod
            .command("iptables")
            .args(["-t", "nat"])
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let with_mine = nat_table(&pod);
    let out = run(&["--cleanup"]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.starts_with("error: iptables-restore failed")
            && stderr.contains("ISTIO_OUTPUT")
            && stderr.contains("Device or resource busy"),
        "{stderr}"
    );
    assert_eq!(nat_table(&pod), with_mine);
    assert!(
        with_mine.contains("-A OUTPUT -p tcp -j ISTIO_OUTPUT\n"),
        "{with_mine}"
    );
}
