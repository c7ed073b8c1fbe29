//! `wasmesh-proxy init`: the transparent interception Istio's `istio-iptables` installs in a
//! pod before its workload starts, so that the workload's TCP traffic goes through the sidecar
//! without the workload knowing.
//!
//! In the nat table, four chains:
//! - `ISTIO_INBOUND` (from `PREROUTING`, TCP): the excluded inbound ports return, the included
//!   ones (all by default) go to `ISTIO_IN_REDIRECT`, which redirects them to the sidecar's
//!   inbound port (15006);
//! - `ISTIO_OUTPUT` (from `OUTPUT`, TCP), in Istio's order: excluded outbound ports return;
//!   connections from 127.0.0.6 (the sidecar's inbound passthrough) return; the sidecar's own
//!   connections to its pod's address over `lo` go to `ISTIO_IN_REDIRECT` (a workload calling
//!   itself through a service comes back in through the sidecar), other `lo` traffic returns,
//!   and so does everything else the sidecar's uid or gid sends; 127.0.0.1 returns; excluded
//!   outbound ranges return; the included ranges (all by default) go to `ISTIO_REDIRECT`,
//!   which redirects them to the sidecar's outbound port (15001).
//!
//! The rules are one `iptables-restore` input ([`rules`], a pure function) applied atomically
//! with `iptables-restore --noflush`: the four chains are declared, so they are created or
//! flushed, and jumps a previous run left in the built-in chains are deleted in the same
//! transaction, so running init twice leaves the same rules. [`cleanup`] removes the jumps and
//! the chains.
//!
//! IPv4 only: no `ip6tables` rules are installed, so IPv6 traffic is not intercepted (Istio
//! installs the same rules with `ip6tables` when IPv6 is enabled). Istio's TPROXY mode, DNS
//! capture and HBONE port (15008) are not supported.

use std::fmt;
use std::io::{self, Write};
use std::net::Ipv4Addr;
use std::process::{Command, ExitStatus, Stdio};

/// Where outbound TCP is redirected: the sidecar's outbound listener (Istio's `-p`).
pub const REDIRECT_PORT: u16 = 15001;
/// Where inbound TCP is redirected: the sidecar's inbound listener (Istio's `-z`).
pub const INBOUND_CAPTURE_PORT: u16 = 15006;
/// The user and group the sidecar runs as (Istio's `-u` and `-g`).
pub const PROXY_ID: u32 = 1337;
/// Inbound ports never redirected: the sidecar's listeners (15001, 15006) and admin (15000),
/// and the ports Istio's injector excludes (15020 merged metrics, 15021 health, 15090
/// Prometheus).
pub const EXCLUDED_INBOUND_PORTS: [u16; 6] = [15001, 15006, 15000, 15020, 15021, 15090];
/// The chains init owns, in the nat table.
pub const CHAINS: [&str; 4] = [
    "ISTIO_INBOUND",
    "ISTIO_IN_REDIRECT",
    "ISTIO_OUTPUT",
    "ISTIO_REDIRECT",
];
/// The nat table's built-in chains, where init's jumps are.
const BUILT_IN: [&str; 4] = ["PREROUTING", "INPUT", "OUTPUT", "POSTROUTING"];

/// Why init could not install or remove the rules.
#[derive(Debug, thiserror::Error)]
pub enum InitError {
    /// A flag's value is wrong: names the flag, the value and the reason.
    #[error("{flag} {value:?}: {reason}")]
    Invalid {
        flag: &'static str,
        value: String,
        reason: &'static str,
    },
    #[error("cannot run {program}: {source}")]
    Run {
        program: &'static str,
        source: io::Error,
    },
    /// iptables refused: its own message.
    #[error("{program} failed ({status}): {stderr}")]
    Failed {
        program: &'static str,
        status: ExitStatus,
        stderr: String,
    },
}

/// What to redirect: everything, or only these (none when empty).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Capture<T> {
    All,
    Only(Vec<T>),
}

/// An IPv4 range, `a.b.c.d/n` (a bare address is `/32`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cidr {
    pub addr: Ipv4Addr,
    pub prefix: u8,
}

impl Cidr {
    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        let mask = u32::MAX
            .checked_shl(32 - u32::from(self.prefix))
            .unwrap_or(0);
        u32::from(ip) & mask == u32::from(self.addr) & mask
    }
}

impl std::str::FromStr for Cidr {
    type Err = &'static str;

    fn from_str(text: &str) -> Result<Cidr, &'static str> {
        let bad = "not an IPv4 address or CIDR (a.b.c.d/n)";
        let (addr, prefix) = text.split_once('/').unwrap_or((text, "32"));
        let addr = addr.parse().map_err(|_| bad)?;
        let prefix = prefix.parse().ok().filter(|p| *p <= 32).ok_or(bad)?;
        Ok(Cidr { addr, prefix })
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

/// What init redirects. The defaults are Istio's.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Options {
    /// The sidecar's outbound port.
    pub redirect_port: u16,
    /// The sidecar's inbound port.
    pub inbound_capture_port: u16,
    /// The sidecar's users and groups: what they send is not redirected (loops otherwise).
    pub proxy_uids: Vec<u32>,
    pub proxy_gids: Vec<u32>,
    pub inbound_ports: Capture<u16>,
    /// Besides [`EXCLUDED_INBOUND_PORTS`] and the two ports above. Exclusions win over an
    /// explicit list of inbound ports too (Istio applies them to `*` only).
    pub exclude_inbound_ports: Vec<u16>,
    pub outbound_ip_ranges: Capture<Cidr>,
    pub exclude_outbound_ip_ranges: Vec<Cidr>,
    pub exclude_outbound_ports: Vec<u16>,
}

impl Default for Options {
    fn default() -> Options {
        Options {
            redirect_port: REDIRECT_PORT,
            inbound_capture_port: INBOUND_CAPTURE_PORT,
            proxy_uids: vec![PROXY_ID],
            proxy_gids: vec![PROXY_ID],
            inbound_ports: Capture::All,
            exclude_inbound_ports: Vec::new(),
            outbound_ip_ranges: Capture::All,
            exclude_outbound_ip_ranges: Vec::new(),
            exclude_outbound_ports: Vec::new(),
        }
    }
}

impl Options {
    /// Every inbound port that returns, without repeats.
    fn excluded_inbound_ports(&self) -> Vec<u16> {
        let mut ports = EXCLUDED_INBOUND_PORTS.to_vec();
        ports.extend([self.redirect_port, self.inbound_capture_port]);
        ports.extend(&self.exclude_inbound_ports);
        let mut seen = std::collections::HashSet::new();
        ports.retain(|p| seen.insert(*p));
        ports
    }
}

/// A port, 1-65535.
pub fn parse_port(flag: &'static str, text: &str) -> Result<u16, InitError> {
    item(flag, text.trim(), |t| {
        t.parse()
            .ok()
            .filter(|p| *p != 0)
            .ok_or("not a port (1-65535)")
    })
}

/// Ports, comma-separated; empty for none.
pub fn parse_ports(flag: &'static str, text: &str) -> Result<Vec<u16>, InitError> {
    list(flag, text, |t| parse_port(flag, t))
}

/// `*`, or ports as [`parse_ports`].
pub fn parse_port_capture(flag: &'static str, text: &str) -> Result<Capture<u16>, InitError> {
    capture(flag, text, parse_ports)
}

/// IPv4 ranges, comma-separated; empty for none.
pub fn parse_cidrs(flag: &'static str, text: &str) -> Result<Vec<Cidr>, InitError> {
    list(flag, text, |t| item(flag, t, str::parse))
}

/// `*`, or ranges as [`parse_cidrs`].
pub fn parse_cidr_capture(flag: &'static str, text: &str) -> Result<Capture<Cidr>, InitError> {
    capture(flag, text, parse_cidrs)
}

/// User or group ids, comma-separated, at least one.
pub fn parse_ids(flag: &'static str, text: &str) -> Result<Vec<u32>, InitError> {
    let ids = list(flag, text, |t| {
        item(flag, t, |t| t.parse().map_err(|_| "not a user or group id"))
    })?;
    if ids.is_empty() {
        return Err(invalid(flag, text, "at least one id is needed"));
    }
    Ok(ids)
}

fn invalid(flag: &'static str, value: &str, reason: &'static str) -> InitError {
    InitError::Invalid {
        flag,
        value: value.to_owned(),
        reason,
    }
}

fn item<T>(
    flag: &'static str,
    text: &str,
    parse: impl FnOnce(&str) -> Result<T, &'static str>,
) -> Result<T, InitError> {
    parse(text).map_err(|reason| invalid(flag, text, reason))
}

fn list<T>(
    flag: &'static str,
    text: &str,
    parse: impl Fn(&str) -> Result<T, InitError>,
) -> Result<Vec<T>, InitError> {
    if text.trim() == "*" {
        return Err(invalid(flag, text, "`*` is not allowed here"));
    }
    text.split(',')
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .map(parse)
        .collect()
}

fn capture<T>(
    flag: &'static str,
    text: &str,
    parse: impl Fn(&'static str, &str) -> Result<Vec<T>, InitError>,
) -> Result<Capture<T>, InitError> {
    match text.trim() {
        "*" => Ok(Capture::All),
        _ => parse(flag, text).map(Capture::Only),
    }
}

/// The `iptables-restore` input that installs the rules. `current` is the nat table as
/// `iptables-save -t nat` prints it: the jumps to init's chains that it holds in the built-in
/// chains are deleted first (empty for a pod never initialized, as `--dry-run` shows).
pub fn rules(options: &Options, current: &str) -> String {
    let mut out = String::from("*nat\n");
    for chain in CHAINS {
        out += &format!(":{chain} - [0:0]\n");
    }
    for jump in jumps_into_chains(current) {
        out += &format!("-D {jump}\n");
    }
    let mut rule = |text: String| out += &format!("-A {text}\n");

    let capture_inbound = options.inbound_ports != Capture::Only(Vec::new());
    if capture_inbound {
        for port in options.excluded_inbound_ports() {
            rule(format!("ISTIO_INBOUND -p tcp --dport {port} -j RETURN"));
        }
    }
    match &options.inbound_ports {
        Capture::All => rule("ISTIO_INBOUND -p tcp -j ISTIO_IN_REDIRECT".into()),
        Capture::Only(ports) => {
            for port in ports {
                rule(format!(
                    "ISTIO_INBOUND -p tcp --dport {port} -j ISTIO_IN_REDIRECT"
                ));
            }
        }
    }
    rule(format!(
        "ISTIO_IN_REDIRECT -p tcp -j REDIRECT --to-ports {}",
        options.inbound_capture_port
    ));

    for port in &options.exclude_outbound_ports {
        rule(format!("ISTIO_OUTPUT -p tcp --dport {port} -j RETURN"));
    }
    rule("ISTIO_OUTPUT -s 127.0.0.6/32 -o lo -j RETURN".into());
    // Unless loopback is redirected on purpose, a workload's calls to itself by its own
    // address stay on lo.
    let loopback_included = match &options.outbound_ip_ranges {
        Capture::All => false,
        Capture::Only(ranges) => ranges.iter().any(|r| r.contains(Ipv4Addr::LOCALHOST)),
    };
    let owners = (options.proxy_uids.iter().map(|id| ("--uid-owner", id)))
        .chain(options.proxy_gids.iter().map(|id| ("--gid-owner", id)));
    for (owner, id) in owners {
        rule(format!(
            "ISTIO_OUTPUT -o lo ! -d 127.0.0.1/32 -p tcp -m owner {owner} {id} -j ISTIO_IN_REDIRECT"
        ));
        if !loopback_included {
            rule(format!(
                "ISTIO_OUTPUT -o lo -m owner ! {owner} {id} -j RETURN"
            ));
        }
        rule(format!("ISTIO_OUTPUT -m owner {owner} {id} -j RETURN"));
    }
    rule("ISTIO_OUTPUT -d 127.0.0.1/32 -j RETURN".into());
    for range in &options.exclude_outbound_ip_ranges {
        rule(format!("ISTIO_OUTPUT -d {range} -j RETURN"));
    }
    match &options.outbound_ip_ranges {
        Capture::All => rule("ISTIO_OUTPUT -j ISTIO_REDIRECT".into()),
        Capture::Only(ranges) => {
            for range in ranges {
                rule(format!("ISTIO_OUTPUT -d {range} -j ISTIO_REDIRECT"));
            }
        }
    }
    rule(format!(
        "ISTIO_REDIRECT -p tcp -j REDIRECT --to-ports {}",
        options.redirect_port
    ));

    if capture_inbound {
        rule("PREROUTING -p tcp -j ISTIO_INBOUND".into());
    }
    rule("OUTPUT -p tcp -j ISTIO_OUTPUT".into());
    out + "COMMIT\n"
}

/// The `iptables-restore` input that removes what [`rules`] installed from the nat table
/// `current` (as `iptables-save -t nat` prints it): the jumps, then the chains. `None` when
/// there is nothing to remove.
pub fn cleanup_rules(current: &str) -> Option<String> {
    let jumps = jumps_into_chains(current);
    let chains: Vec<&str> = nat_lines(current)
        .filter_map(|l| l.strip_prefix(':')?.split_whitespace().next())
        .filter(|c| CHAINS.contains(c))
        .collect();
    if jumps.is_empty() && chains.is_empty() {
        return None;
    }
    let mut out = String::from("*nat\n");
    for jump in jumps {
        out += &format!("-D {jump}\n");
    }
    // Emptied first: the chains jump to each other.
    for chain in &chains {
        out += &format!("-F {chain}\n");
    }
    for chain in &chains {
        out += &format!("-X {chain}\n");
    }
    Some(out + "COMMIT\n")
}

/// The lines of the nat table in `iptables-save` output.
fn nat_lines(save: &str) -> impl Iterator<Item = &str> {
    save.lines()
        .map(str::trim)
        .skip_while(|l| *l != "*nat")
        .skip(1)
        .take_while(|l| *l != "COMMIT")
}

/// The rules of the built-in chains that jump to init's chains, without `-A`, as `-D` takes
/// them.
fn jumps_into_chains(save: &str) -> Vec<&str> {
    nat_lines(save)
        .filter_map(|l| l.strip_prefix("-A "))
        .filter(|rule| {
            let words: Vec<&str> = rule.split_whitespace().collect();
            BUILT_IN.contains(&words[0])
                && words.len() >= 3
                && words[words.len() - 2] == "-j"
                && CHAINS.contains(&words[words.len() - 1])
        })
        .collect()
}

/// Installs the rules: reads the nat table, applies [`rules`] with `iptables-restore
/// --noflush`. Needs root (`CAP_NET_ADMIN`) in the pod's network namespace.
pub fn install(options: &Options) -> Result<(), InitError> {
    let current = run("iptables-save", &["-t", "nat"], None)?;
    let input = rules(options, &current);
    tracing::debug!(input = %input, "iptables-restore --noflush");
    run("iptables-restore", &["--noflush"], Some(&input))?;
    tracing::info!(
        rules = input.lines().filter(|l| l.starts_with("-A ")).count(),
        redirect_port = options.redirect_port,
        inbound_capture_port = options.inbound_capture_port,
        "interception rules installed"
    );
    Ok(())
}

/// Removes the jumps and chains init installed; `false` when there was nothing to remove.
/// With `dry_run`, prints the `iptables-restore` input instead of applying it.
pub fn cleanup(dry_run: bool) -> Result<bool, InitError> {
    let current = run("iptables-save", &["-t", "nat"], None)?;
    let Some(input) = cleanup_rules(&current) else {
        tracing::info!("no interception rules to remove");
        return Ok(false);
    };
    if dry_run {
        print!("{input}");
        return Ok(true);
    }
    tracing::debug!(input = %input, "iptables-restore --noflush");
    run("iptables-restore", &["--noflush"], Some(&input))?;
    tracing::info!("interception rules removed");
    Ok(true)
}

/// Runs an iptables command, found on `PATH` or in /usr/sbin, with `stdin`; its stdout.
fn run(program: &'static str, args: &[&str], stdin: Option<&str>) -> Result<String, InitError> {
    let spawn = |path: &str| {
        Command::new(path)
            .args(args)
            .stdin(if stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
    };
    let mut child = match spawn(program) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => spawn(&format!("/usr/sbin/{program}")),
        other => other,
    }
    .map_err(|source| InitError::Run { program, source })?;
    if let (Some(input), Some(mut pipe)) = (stdin, child.stdin.take()) {
        // A failed write shows as the program's failure, with its message.
        let _ = pipe.write_all(input.as_bytes());
    }
    let output = child
        .wait_with_output()
        .map_err(|source| InitError::Run { program, source })?;
    if !output.status.success() {
        return Err(InitError::Failed {
            program,
            status: output.status,
            stderr: String::from_utf8_lossy(&output.stderr).trim().to_owned(),
        });
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule_lines(input: &str) -> Vec<&str> {
        input.lines().filter(|l| l.starts_with("-A ")).collect()
    }

    #[test]
    fn the_defaults_are_istios_rules() {
        let input = rules(&Options::default(), "");
        assert_eq!(
            input,
            "*nat
:ISTIO_INBOUND - [0:0]
:ISTIO_IN_REDIRECT - [0:0]
:ISTIO_OUTPUT - [0:0]
:ISTIO_REDIRECT - [0:0]
-A ISTIO_INBOUND -p tcp --dport 15001 -j RETURN
-A ISTIO_INBOUND -p tcp --dport 15006 -j RETURN
-A ISTIO_INBOUND -p tcp --dport 15000 -j RETURN
-A ISTIO_INBOUND -p tcp --dport 15020 -j RETURN
-A ISTIO_INBOUND -p tcp --dport 15021 -j RETURN
-A ISTIO_INBOUND -p tcp --dport 15090 -j RETURN
-A ISTIO_INBOUND -p tcp -j ISTIO_IN_REDIRECT
-A ISTIO_IN_REDIRECT -p tcp -j REDIRECT --to-ports 15006
-A ISTIO_OUTPUT -s 127.0.0.6/32 -o lo -j RETURN
-A ISTIO_OUTPUT -o lo ! -d 127.0.0.1/32 -p tcp -m owner --uid-owner 1337 -j ISTIO_IN_REDIRECT
-A ISTIO_OUTPUT -o lo -m owner ! --uid-owner 1337 -j RETURN
-A ISTIO_OUTPUT -m owner --uid-owner 1337 -j RETURN
-A ISTIO_OUTPUT -o lo ! -d 127.0.0.1/32 -p tcp -m owner --gid-owner 1337 -j ISTIO_IN_REDIRECT
-A ISTIO_OUTPUT -o lo -m owner ! --gid-owner 1337 -j RETURN
-A ISTIO_OUTPUT -m owner --gid-owner 1337 -j RETURN
-A ISTIO_OUTPUT -d 127.0.0.1/32 -j RETURN
-A ISTIO_OUTPUT -j ISTIO_REDIRECT
-A ISTIO_REDIRECT -p tcp -j REDIRECT --to-ports 15001
-A PREROUTING -p tcp -j ISTIO_INBOUND
-A OUTPUT -p tcp -j ISTIO_OUTPUT
COMMIT
"
        );
    }

    #[test]
    fn flags_shape_the_rules() {
        let options = Options {
            redirect_port: 16001,
            inbound_capture_port: 16006,
            proxy_uids: vec![3, 4],
            proxy_gids: vec![5],
            inbound_ports: Capture::Only(vec![9080, 9090]),
            exclude_inbound_ports: vec![22, 15000],
            outbound_ip_ranges: Capture::Only(vec!["10.0.0.0/8".parse().unwrap()]),
            exclude_outbound_ip_ranges: vec!["10.96.0.0/12".parse().unwrap()],
            exclude_outbound_ports: vec![5432],
        };
        let input = rules(&options, "");
        let lines = rule_lines(&input);
        // The excluded inbound ports: the fixed ones, the proxy's ports as configured, the
        // flag's, once each; then the included ports.
        let inbound: Vec<&str> = lines
            .iter()
            .filter(|l| l.starts_with("-A ISTIO_INBOUND"))
            .map(|l| &l["-A ISTIO_INBOUND -p tcp --dport ".len()..])
            .collect();
        assert_eq!(
            inbound,
            [
                "15001 -j RETURN",
                "15006 -j RETURN",
                "15000 -j RETURN",
                "15020 -j RETURN",
                "15021 -j RETURN",
                "15090 -j RETURN",
                "16001 -j RETURN",
                "16006 -j RETURN",
                "22 -j RETURN",
                "9080 -j ISTIO_IN_REDIRECT",
                "9090 -j ISTIO_IN_REDIRECT",
            ]
        );
        let output: Vec<&str> = lines
            .iter()
            .filter_map(|l| l.strip_prefix("-A ISTIO_OUTPUT "))
            .collect();
        assert_eq!(
            output,
            [
                "-p tcp --dport 5432 -j RETURN",
                "-s 127.0.0.6/32 -o lo -j RETURN",
                "-o lo ! -d 127.0.0.1/32 -p tcp -m owner --uid-owner 3 -j ISTIO_IN_REDIRECT",
                "-o lo -m owner ! --uid-owner 3 -j RETURN",
                "-m owner --uid-owner 3 -j RETURN",
                "-o lo ! -d 127.0.0.1/32 -p tcp -m owner --uid-owner 4 -j ISTIO_IN_REDIRECT",
                "-o lo -m owner ! --uid-owner 4 -j RETURN",
                "-m owner --uid-owner 4 -j RETURN",
                "-o lo ! -d 127.0.0.1/32 -p tcp -m owner --gid-owner 5 -j ISTIO_IN_REDIRECT",
                "-o lo -m owner ! --gid-owner 5 -j RETURN",
                "-m owner --gid-owner 5 -j RETURN",
                "-d 127.0.0.1/32 -j RETURN",
                "-d 10.96.0.0/12 -j RETURN",
                "-d 10.0.0.0/8 -j ISTIO_REDIRECT",
            ]
        );
        assert!(lines.contains(&"-A ISTIO_IN_REDIRECT -p tcp -j REDIRECT --to-ports 16006"));
        assert!(lines.contains(&"-A ISTIO_REDIRECT -p tcp -j REDIRECT --to-ports 16001"));
    }

    #[test]
    fn no_inbound_ports_means_no_inbound_capture() {
        let options = Options {
            inbound_ports: Capture::Only(Vec::new()),
            outbound_ip_ranges: Capture::Only(Vec::new()),
            ..Options::default()
        };
        let input = rules(&options, "");
        assert!(!input.contains("PREROUTING"), "{input}");
        assert!(!input.contains("-A ISTIO_INBOUND"), "{input}");
        assert!(!input.contains("-j ISTIO_REDIRECT"), "{input}");
        // The chains exist all the same, and the proxy's own traffic is still told apart.
        assert!(input.contains(":ISTIO_INBOUND - [0:0]\n"), "{input}");
        assert!(
            input.contains("-A OUTPUT -p tcp -j ISTIO_OUTPUT\n"),
            "{input}"
        );
    }

    #[test]
    fn loopback_redirected_on_purpose_is_not_returned() {
        let options = Options {
            outbound_ip_ranges: Capture::Only(vec!["127.0.0.0/8".parse().unwrap()]),
            ..Options::default()
        };
        let input = rules(&options, "");
        assert!(!input.contains("-o lo -m owner !"), "{input}");
        assert!(input.contains("-A ISTIO_OUTPUT -d 127.0.0.0/8 -j ISTIO_REDIRECT\n"));
    }

    /// What `iptables-save -t nat` printed after a first init (shortened) and an istio-iptables
    /// jump without `-p tcp`.
    const SAVED: &str = "# Generated by iptables-save v1.8.9 (nf_tables)
*nat
:PREROUTING ACCEPT [0:0]
:INPUT ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:POSTROUTING ACCEPT [0:0]
:ISTIO_INBOUND - [0:0]
:ISTIO_IN_REDIRECT - [0:0]
:ISTIO_OUTPUT - [0:0]
:ISTIO_REDIRECT - [0:0]
:KUBE_SERVICES - [0:0]
-A PREROUTING -p tcp -j ISTIO_INBOUND
-A PREROUTING -j KUBE_SERVICES
-A OUTPUT -p tcp -j ISTIO_OUTPUT
-A OUTPUT -j ISTIO_OUTPUT
-A ISTIO_INBOUND -p tcp -j ISTIO_IN_REDIRECT
-A ISTIO_IN_REDIRECT -p tcp -j REDIRECT --to-ports 15006
-A ISTIO_OUTPUT -j ISTIO_REDIRECT
COMMIT
# Completed
";

    #[test]
    fn init_deletes_the_jumps_it_finds_before_adding_its_own() {
        let input = rules(&Options::default(), SAVED);
        let deleted: Vec<&str> = input.lines().filter(|l| l.starts_with("-D ")).collect();
        assert_eq!(
            deleted,
            [
                "-D PREROUTING -p tcp -j ISTIO_INBOUND",
                "-D OUTPUT -p tcp -j ISTIO_OUTPUT",
                "-D OUTPUT -j ISTIO_OUTPUT",
            ]
        );
        let at = |needle: &str| input.find(needle).unwrap();
        assert!(at("-D PREROUTING") < at("-A PREROUTING"));
        assert!(at("-D OUTPUT") < at("-A OUTPUT"));
    }

    #[test]
    fn a_second_init_installs_what_the_first_did() {
        let first = rules(&Options::default(), "");
        // The table the first run leaves, as far as the built-in chains go (the ISTIO_* chains
        // are flushed by their declaration).
        let jumps: String = first
            .lines()
            .filter(|l| l.starts_with("-A PREROUTING") || l.starts_with("-A OUTPUT"))
            .map(|l| format!("{l}\n"))
            .collect();
        let second = rules(&Options::default(), &format!("*nat\n{jumps}COMMIT\n"));
        let deleted: String = second
            .lines()
            .filter_map(|l| l.strip_prefix("-D "))
            .map(|l| format!("-A {l}\n"))
            .collect();
        assert_eq!(deleted, jumps);
        let kept: String = second
            .lines()
            .filter(|l| !l.starts_with("-D "))
            .map(|l| format!("{l}\n"))
            .collect();
        assert_eq!(kept, first);
    }

    #[test]
    fn cleanup_removes_the_jumps_then_the_chains() {
        assert_eq!(
            cleanup_rules(SAVED).unwrap(),
            "*nat
-D PREROUTING -p tcp -j ISTIO_INBOUND
-D OUTPUT -p tcp -j ISTIO_OUTPUT
-D OUTPUT -j ISTIO_OUTPUT
-F ISTIO_INBOUND
-F ISTIO_IN_REDIRECT
-F ISTIO_OUTPUT
-F ISTIO_REDIRECT
-X ISTIO_INBOUND
-X ISTIO_IN_REDIRECT
-X ISTIO_OUTPUT
-X ISTIO_REDIRECT
COMMIT
"
        );
        let clean = "*nat\n:PREROUTING ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\nCOMMIT\n";
        assert_eq!(cleanup_rules(clean), None);
        assert_eq!(cleanup_rules(""), None);
    }

    #[test]
    fn bad_values_name_the_flag_and_the_value() {
        fn message<T: std::fmt::Debug>(result: Result<T, InitError>) -> String {
            result.unwrap_err().to_string()
        }
        assert_eq!(
            message(parse_ports("--exclude-inbound-ports", "80, 70000")),
            "--exclude-inbound-ports \"70000\": not a port (1-65535)"
        );
        assert_eq!(
            message(parse_port("--redirect-port", "0")),
            "--redirect-port \"0\": not a port (1-65535)"
        );
        assert_eq!(
            message(parse_cidr_capture("--outbound-ip-ranges", "10.0.0/8")),
            "--outbound-ip-ranges \"10.0.0/8\": not an IPv4 address or CIDR (a.b.c.d/n)"
        );
        assert_eq!(
            message(parse_cidrs("--exclude-outbound-ip-ranges", "10.0.0.0/33")),
            "--exclude-outbound-ip-ranges \"10.0.0.0/33\": not an IPv4 address or CIDR (a.b.c.d/n)"
        );
        assert_eq!(
            message(parse_cidrs("--exclude-outbound-ip-ranges", "*")),
            "--exclude-outbound-ip-ranges \"*\": `*` is not allowed here"
        );
        assert_eq!(
            message(parse_ids("--proxy-uid", "istio")),
            "--proxy-uid \"istio\": not a user or group id"
        );
        assert_eq!(
            message(parse_ids("--proxy-gid", "")),
            "--proxy-gid \"\": at least one id is needed"
        );
    }

    #[test]
    fn good_values_parse() {
        assert_eq!(parse_port_capture("-b", "*").unwrap(), Capture::All);
        assert_eq!(
            parse_port_capture("-b", "9080,9090").unwrap(),
            Capture::Only(vec![9080, 9090])
        );
        assert_eq!(parse_port_capture("-b", "").unwrap(), Capture::Only(vec![]));
        assert_eq!(
            parse_cidrs("-x", "10.96.0.0/12, 1.2.3.4").unwrap(),
            [
                Cidr {
                    addr: Ipv4Addr::new(10, 96, 0, 0),
                    prefix: 12
                },
                Cidr {
                    addr: Ipv4Addr::new(1, 2, 3, 4),
                    prefix: 32
                },
            ]
        );
        assert_eq!(parse_ids("-u", "1337,0").unwrap(), [1337, 0]);
        let all: Cidr = "0.0.0.0/0".parse().unwrap();
        assert!(all.contains(Ipv4Addr::LOCALHOST));
        let loopback: Cidr = "127.0.0.0/8".parse().unwrap();
        assert!(loopback.contains(Ipv4Addr::LOCALHOST));
        assert!(!loopback.contains(Ipv4Addr::new(10, 0, 0, 1)));
    }
}
