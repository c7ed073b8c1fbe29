//! Pods on this machine, for tests of what happens inside a pod (iptables interception): a
//! [`Node`] is a Linux bridge with its own /24 (the host is `.1` on it, so it reaches the
//! pods), a [`Pod`] a network namespace wired to it by a veth pair (`eth0` inside), with
//! `lo` up and a default route through the bridge.
//!
//! Needs root, `ip` (iproute2) and `setpriv` (util-linux). Tests run in parallel, in one
//! process or many: names carry the process id and a counter (`wmt<pid>b<n>` for bridges,
//! `v` for veths, `p` for namespaces; 15 characters at most, as interface names must be).
//! Everything a node made is removed when it is dropped, a panicking test's too; what a
//! killed test process left is removed by the next process that makes a node.

use std::ffi::OsStr;
use std::fs;
use std::io;
use std::net::{Ipv4Addr, TcpListener, ToSocketAddrs};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Once;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// Numbers the bridges, veths and namespaces of this process.
static NEXT: AtomicU32 = AtomicU32::new(0);

/// A pod network: a bridge and the pods on it.
pub struct Node {
    bridge: String,
    /// `10.a.b.0/24`.
    subnet: [u8; 2],
    pods: Vec<Pod>,
}

/// A pod: a network namespace with `lo` and `eth0` up.
#[derive(Clone, Debug)]
pub struct Pod {
    pub name: String,
    /// For `ip netns exec` (and `/run/netns/<namespace>`).
    pub namespace: String,
    pub ip: Ipv4Addr,
    /// The host side of its veth pair.
    veth: String,
}

impl Node {
    /// A bridge with a /24 that no address on this machine is in yet, up, the host at `.1`.
    pub fn new() -> Node {
        static SWEEP: Once = Once::new();
        SWEEP.call_once(remove_leftovers);
        let (bridge, n) = unique_name('b');
        let subnet = free_subnet(n);
        // Made before the bridge, so that a failure below still removes what was made.
        let node = Node {
            bridge,
            subnet,
            pods: Vec::new(),
        };
        ip(&format!("link add {} type bridge", node.bridge));
        ip(&format!(
            "addr add {}/24 dev {}",
            node.gateway(),
            node.bridge
        ));
        ip(&format!("link set {} up", node.bridge));
        node
    }

    /// The host's address on the bridge: the pods' default gateway.
    pub fn gateway(&self) -> Ipv4Addr {
        Ipv4Addr::new(10, self.subnet[0], self.subnet[1], 1)
    }

    /// A new pod on this node, with the next address of the subnet.
    pub fn pod(&mut self, name: &str) -> Pod {
        let host = u8::try_from(self.pods.len() + 2)
            .ok()
            .filter(|h| *h < 255)
            .expect("a /24 holds 253 pods");
        let (namespace, n) = unique_name('p');
        let pod = Pod {
            name: name.to_owned(),
            namespace,
            ip: Ipv4Addr::new(10, self.subnet[0], self.subnet[1], host),
            veth: format!("wmt{}v{n}", std::process::id()),
        };
        self.pods.push(pod.clone());
        let (ns, veth) = (&pod.namespace, &pod.veth);
        ip(&format!("netns add {ns}"));
        ip(&format!(
            "link add {veth} type veth peer name eth0 netns {ns}"
        ));
        ip(&format!("link set {veth} master {} up", self.bridge));
        ip(&format!("-n {ns} addr add {}/24 dev eth0", pod.ip));
        ip(&format!("-n {ns} link set lo up"));
        ip(&format!("-n {ns} link set eth0 up"));
        ip(&format!("-n {ns} route add default via {}", self.gateway()));
        // Both ends up and the bridge forwarding on the port: frames flow.
        let port = Path::new("/sys/class/net").join(&pod.veth);
        wait_until(&format!("{} forwarding", pod.veth), || {
            read(&port.join("operstate")) == "up" && read(&port.join("brport/state")) == "3"
        });
        pod
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        for pod in self.pods.iter().rev() {
            // Deleting one end deletes the pair at once (a deleted namespace's go later).
            quietly(&format!("link del {}", pod.veth));
            quietly(&format!("netns del {}", pod.namespace));
            let _ = fs::remove_dir_all(etc_netns(&pod.namespace));
        }
        quietly(&format!("link del {}", self.bridge));
    }
}

impl Pod {
    /// `program`, to run inside the pod (`ip netns exec`), as root.
    pub fn command(&self, program: impl AsRef<OsStr>) -> Command {
        let mut command = Command::new("ip");
        command
            .args(["netns", "exec", &self.namespace])
            .arg(program);
        command
    }

    /// `program`, to run inside the pod as `uid` and `gid`, with no supplementary groups.
    pub fn command_as(&self, uid: u32, gid: u32, program: impl AsRef<OsStr>) -> Command {
        let mut command = self.command("setpriv");
        command
            .args(["--reuid", &uid.to_string(), "--regid", &gid.to_string()])
            .arg("--clear-groups")
            .arg(program);
        command
    }

    /// Writes the pod's /etc/hosts (`ip netns exec` mounts /etc/netns/<namespace>/hosts over
    /// /etc/hosts): localhost, the pod's own name, and `entries`.
    pub fn hosts(&self, entries: &[(&str, Ipv4Addr)]) -> io::Result<()> {
        let dir = etc_netns(&self.namespace);
        fs::create_dir_all(&dir)?;
        let mut text = format!(
            "127.0.0.1 localhost\n::1 localhost\n{} {}\n",
            self.ip, self.name
        );
        for (name, ip) in entries {
            text += &format!("{ip} {name}\n");
        }
        fs::write(dir.join("hosts"), text)
    }

    /// Runs `f` on a thread that entered the pod's network namespace: sockets it makes are
    /// the pod's, wherever they are used afterwards.
    pub fn enter<T: Send>(&self, f: impl FnOnce() -> T + Send) -> io::Result<T> {
        let namespace = fs::File::open(Path::new("/run/netns").join(&self.namespace))?;
        std::thread::scope(|s| {
            let thread = s.spawn(|| {
                // SAFETY: changes this thread's network namespace only; the thread ends with `f`.
                if unsafe { libc::setns(namespace.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                    return Err(io::Error::last_os_error());
                }
                Ok(f())
            });
            thread
                .join()
                .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
        })
    }

    /// A TCP listener inside the pod.
    pub fn listen(&self, addr: impl ToSocketAddrs + Send) -> io::Result<TcpListener> {
        self.enter(|| TcpListener::bind(addr))?
    }
}

/// A name for a bridge (`kind` `b`), veth (`v`) or namespace (`p`) of this process, and its
/// number.
fn unique_name(kind: char) -> (String, u32) {
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let name = format!("wmt{}{kind}{n}", std::process::id());
    assert!(
        name.len() <= 15,
        "{name}: longer than an interface name may be"
    );
    (name, n)
}

/// `10.a.b` for a node: from the process id and the node's number, so that concurrent test
/// processes start far apart, then the first whose /24 holds no address of this machine.
fn free_subnet(n: u32) -> [u8; 2] {
    let start = std::process::id().wrapping_mul(8).wrapping_add(n);
    let count = 254 * 256;
    for i in 0..count {
        let v = (start.wrapping_add(i) % count) as u16;
        let subnet = [1 + (v >> 8) as u8, v as u8];
        let prefix = format!("10.{}.{}.0/24", subnet[0], subnet[1]);
        if output("ip", &["-4", "-o", "addr", "show", "to", &prefix]).is_empty() {
            return subnet;
        }
    }
    panic!("no free /24 in 10.0.0.0/8");
}

/// Removes the bridges, veths and namespaces of test processes that are gone (killed before
/// their nodes were dropped), or whose process id this process now has.
fn remove_leftovers() {
    let stale = |name: &str| {
        let Some(rest) = name.strip_prefix("wmt") else {
            return false;
        };
        let digits = rest.len() - rest.trim_start_matches(|c: char| c.is_ascii_digit()).len();
        let Ok(pid) = rest[..digits].parse::<u32>() else {
            return false;
        };
        rest[digits..].starts_with(['b', 'v', 'p'])
            && (pid == std::process::id() || !Path::new(&format!("/proc/{pid}")).exists())
    };
    let names = |dir: &str| -> Vec<String> {
        fs::read_dir(dir)
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| stale(n))
            .collect()
    };
    for namespace in names("/run/netns") {
        quietly(&format!("netns del {namespace}"));
    }
    for dir in names("/etc/netns") {
        let _ = fs::remove_dir_all(etc_netns(&dir));
    }
    for link in names("/sys/class/net") {
        quietly(&format!("link del {link}"));
    }
}

fn etc_netns(namespace: &str) -> PathBuf {
    Path::new("/etc/netns").join(namespace)
}

/// Runs `ip ARGS` (words separated by spaces); panics with its message if it fails.
fn ip(args: &str) {
    output("ip", &args.split_whitespace().collect::<Vec<_>>());
}

/// Runs `ip ARGS`, saying on stderr if it fails (cleaning up must not panic).
fn quietly(args: &str) {
    match Command::new("ip").args(args.split_whitespace()).output() {
        Ok(o) if o.status.success() => {}
        Ok(o) => eprintln!(
            "netns: ip {args}: {}",
            String::from_utf8_lossy(&o.stderr).trim()
        ),
        Err(e) => eprintln!("netns: cannot run ip: {e}"),
    }
}

/// Runs a program to completion; its stdout. Panics with its stderr if it fails.
fn output(program: &str, args: &[&str]) -> String {
    let out = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {program}: {e}"));
    assert!(
        out.status.success(),
        "{program} {} failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr).trim()
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A file's text, trimmed; empty if it cannot be read.
fn read(path: &Path) -> String {
    fs::read_to_string(path)
        .map(|t| t.trim().to_owned())
        .unwrap_or_default()
}

/// Polls `ready` every 10 ms for up to 5 s; panics naming `what` if it never holds.
fn wait_until(what: &str, mut ready: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !ready() {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}
