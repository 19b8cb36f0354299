//! Hosts on a network of the test's own: each host a Linux network namespace with one
//! address, all joined by a bridge in this process's namespace, which holds the gateway
//! address (where the test's control plane, operator, workload and checker are reached).
//! Faults are nftables rules inside a host's namespace. Needs root (CI runs as root).
//!
//! **Addresses and why the traffic stays here.** Each network is `10.213.<n>.0/24` (the
//! first `n` from the process id whose route does not exist yet): the gateway is `.1`, hosts
//! are `.11` upward. The host namespaces have no route but that /24, so nothing they send
//! can leave them except to the bridge; the bridge's only route in this namespace is the
//! /24 itself, and packets are never forwarded to another interface (the namespaces are
//! not routers and nothing here turns forwarding on). Dropping the network deletes the
//! namespaces, and with them the rules and links; a network left behind by a test process
//! that died (its process id gone) is deleted by the next one.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

/// The prefix of everything a network makes: namespaces `spnet<pid>-<n>-<host>`, bridge
/// `spb<pid>-<n>`, links `v<pid>n<n>h<i>` (Linux allows 15 bytes for a link's name).
const PREFIX: &str = "spnet";

/// A network of hosts (see the module's documentation).
pub struct TestNetwork {
    id: String,
    subnet: u8,
    bridge: String,
    hosts: BTreeMap<String, Host>,
}

struct Host {
    namespace: String,
    address: Ipv4Addr,
}

impl TestNetwork {
    /// A new network with no host yet: its bridge and gateway address.
    pub fn new() -> Self {
        sweep_dead_networks();
        static NETWORKS: std::sync::atomic::AtomicU8 = std::sync::atomic::AtomicU8::new(0);
        let n = NETWORKS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let pid = std::process::id();
        let id = format!("{pid}-{n}");
        let subnet = (0..=255u16)
            .map(|i| ((pid as u16).wrapping_add(u16::from(n) * 37).wrapping_add(i) % 250) as u8)
            .find(|subnet| !route_exists(*subnet))
            .expect("a free 10.213.x.0/24");
        let bridge = format!("spb{id}");
        ip(&["link", "add", &bridge, "type", "bridge"]);
        ip(&["link", "set", &bridge, "up"]);
        ip(&[
            "addr",
            "add",
            &format!("10.213.{subnet}.1/24"),
            "dev",
            &bridge,
        ]);
        TestNetwork {
            id,
            subnet,
            bridge,
            hosts: BTreeMap::new(),
        }
    }

    /// The address of this process's end of the network.
    pub fn gateway(&self) -> Ipv4Addr {
        Ipv4Addr::new(10, 213, self.subnet, 1)
    }

    /// Adds host `name` (its own namespace, its loopback up, `eth0` on the bridge) and
    /// returns its address.
    pub fn add_host(&mut self, name: &str) -> Ipv4Addr {
        let i = self.hosts.len();
        let namespace = format!("{PREFIX}{}-{name}", self.id);
        let address = Ipv4Addr::new(10, 213, self.subnet, 11 + i as u8);
        let link = format!("v{}h{i}", self.id.replace('-', "n"));
        ip(&["netns", "add", &namespace]);
        ip(&[
            "link", "add", &link, "type", "veth", "peer", "name", "eth0", "netns", &namespace,
        ]);
        ip(&["link", "set", &link, "master", &self.bridge, "up"]);
        ip(&[
            "-n",
            &namespace,
            "addr",
            "add",
            &format!("{address}/24"),
            "dev",
            "eth0",
        ]);
        ip(&["-n", &namespace, "link", "set", "eth0", "up"]);
        ip(&["-n", &namespace, "link", "set", "lo", "up"]);
        self.hosts
            .insert(name.to_owned(), Host { namespace, address });
        address
    }

    /// The address of host `name`.
    pub fn address(&self, name: &str) -> Ipv4Addr {
        self.host(name).address
    }

    /// A command that runs `program` on host `name` (`ip netns exec`, which execs it: the
    /// child is the program itself).
    pub fn command(&self, name: &str, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut command = Command::new("ip");
        command
            .args(["netns", "exec", &self.host(name).namespace])
            .arg(program);
        command
    }

    /// Cuts host `name` off from everything (packets dropped both ways, so calls hang until
    /// their deadlines): only its own loopback still works.
    pub fn isolate(&self, name: &str) {
        self.drop_both_ways(name, "iifname \"eth0\"", "oifname \"eth0\"");
    }

    /// Cuts host `name` off from `peers` only (packets dropped both ways).
    pub fn cut(&self, name: &str, peers: &[Ipv4Addr]) {
        let set = listed(peers);
        self.drop_both_ways(
            name,
            &format!("ip saddr {{ {set} }}"),
            &format!("ip daddr {{ {set} }}"),
        );
    }

    /// Cuts host `name` off from TCP port `ports` of `peer` (packets dropped both ways),
    /// leaving its other traffic with `peer` alone.
    pub fn cut_ports(&self, name: &str, peer: Ipv4Addr, ports: &[u16]) {
        let set = listed(ports);
        self.drop_both_ways(
            name,
            &format!("ip saddr {peer} tcp sport {{ {set} }}"),
            &format!("ip daddr {peer} tcp dport {{ {set} }}"),
        );
    }

    /// Drops the packets host `name` receives that match `incoming` and those it sends that
    /// match `outgoing` (nftables expressions).
    fn drop_both_ways(&self, name: &str, incoming: &str, outgoing: &str) {
        self.rules(
            name,
            &format!(
                "table inet partition {{\n\
                   chain input {{ type filter hook input priority 0; policy accept; {incoming} drop; }}\n\
                   chain output {{ type filter hook output priority 0; policy accept; {outgoing} drop; }}\n\
                 }}\n"
            ),
        );
    }

    /// Removes every fault of host `name`.
    pub fn heal(&self, name: &str) {
        let out = self
            .command(name, "nft")
            .args(["delete", "table", "inet", "partition"])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "nft: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Makes the link from host `name` to `peers` slow as `shape` says, until the returned
    /// [`SlowLink`] is stopped or dropped: every packet the host sends them is queued to user
    /// space (an iptables `NFQUEUE` rule in the host's namespace — this kernel has no `netem`
    /// and no nftables `queue`, but has the xtables target) and a thread in that namespace
    /// holds it for the delay, in order, or drops it. Apply it on both ends for a slow link
    /// both ways.
    pub fn slow_link(&self, name: &str, peers: &[Ipv4Addr], shape: LinkShape) -> SlowLink {
        let namespace = PathBuf::from(format!("/var/run/netns/{}", self.host(name).namespace));
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (bound, ready) = std::sync::mpsc::channel();
        let thread = std::thread::spawn({
            let stop = stop.clone();
            move || hold_packets(&namespace, shape, &stop, bound)
        });
        ready
            .recv()
            .expect("the slow link's thread ended")
            .expect("the slow link's queue is bound");
        let destinations = listed(peers).replace(", ", ",");
        let host = &self.host(name).namespace;
        ip(&[
            "netns",
            "exec",
            host,
            "iptables-nft",
            "-A",
            "OUTPUT",
            "-d",
            &destinations,
            "-j",
            "NFQUEUE",
            "--queue-num",
            "0",
            "--queue-bypass",
        ]);
        SlowLink {
            host: host.clone(),
            stop,
            thread: Some(thread),
        }
    }

    /// Opens connections from inside host `name` (its loopback reaches its own instances
    /// whatever the faults), for observing a host the test cut off.
    pub fn connector(&self, name: &str) -> Connector {
        Connector {
            namespace: PathBuf::from(format!("/var/run/netns/{}", self.host(name).namespace)),
        }
    }

    fn rules(&self, name: &str, ruleset: &str) {
        use std::io::Write;
        let mut nft = self
            .command(name, "nft")
            .args(["-f", "-"])
            .stdin(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("nft (Debian package nftables) runs");
        nft.stdin
            .take()
            .unwrap()
            .write_all(ruleset.as_bytes())
            .unwrap();
        let out = nft.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "nft refused the rules: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    fn host(&self, name: &str) -> &Host {
        self.hosts
            .get(name)
            .unwrap_or_else(|| panic!("no host {name} on the test network"))
    }
}

impl Drop for TestNetwork {
    fn drop(&mut self) {
        for host in self.hosts.values() {
            let _ = Command::new("ip")
                .args(["netns", "del", &host.namespace])
                .output();
        }
        let _ = Command::new("ip")
            .args(["link", "del", &self.bridge])
            .output();
    }
}

/// Opens TCP connections from inside one host's namespace ([`TestNetwork::connector`]).
#[derive(Clone, Debug)]
pub struct Connector {
    namespace: PathBuf,
}

impl Connector {
    /// A connection to `to` made from inside the host (within 2 s).
    pub async fn connect(&self, to: SocketAddr) -> std::io::Result<tokio::net::TcpStream> {
        let namespace = self.namespace.clone();
        let (made, stream) = tokio::sync::oneshot::channel();
        // A thread of its own, which enters the namespace and ends; the socket stays in the
        // namespace it was made in.
        std::thread::spawn(move || {
            let connect = || -> std::io::Result<std::net::TcpStream> {
                let namespace = std::fs::File::open(&namespace)?;
                // SAFETY: setns with a valid descriptor changes only this thread's namespace.
                if unsafe { libc::setns(namespace.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                let stream = std::net::TcpStream::connect_timeout(&to, Duration::from_secs(2))?;
                stream.set_nonblocking(true)?;
                Ok(stream)
            };
            let _ = made.send(connect());
        });
        let stream = stream
            .await
            .map_err(|_| std::io::Error::other("the connecting thread ended"))??;
        tokio::net::TcpStream::from_std(stream)
    }
}

/// `items` as an nftables set's elements.
fn listed<T: ToString>(items: &[T]) -> String {
    items
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

/// Runs `ip` with `args`; panics with its words if it fails.
fn ip(args: &[&str]) {
    let out = Command::new("ip")
        .args(args)
        .output()
        .expect("ip (Debian package iproute2) runs");
    assert!(
        out.status.success(),
        "ip {}: {} (the test network needs root)",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr).trim()
    );
}

/// Whether this namespace has a route for `10.213.<subnet>.0/24` already (another network's).
fn route_exists(subnet: u8) -> bool {
    let out = Command::new("ip")
        .args(["-4", "route", "show", &format!("10.213.{subnet}.0/24")])
        .output()
        .expect("ip (Debian package iproute2) runs");
    !out.stdout.is_empty()
}

/// Deletes the namespaces and bridges of networks whose test process is gone.
fn sweep_dead_networks() {
    let dead = |name: &str, prefix: &str| {
        name.strip_prefix(prefix)
            .and_then(|rest| rest.split('-').next())
            .and_then(|pid| pid.parse::<u32>().ok())
            .is_some_and(|pid| !std::path::Path::new(&format!("/proc/{pid}")).exists())
    };
    let listed = |args: &[&str]| {
        Command::new("ip")
            .args(args)
            .output()
            .map(|out| String::from_utf8_lossy(&out.stdout).into_owned())
            .unwrap_or_default()
    };
    for line in listed(&["netns", "list"]).lines() {
        let name = line.split_whitespace().next().unwrap_or_default();
        if dead(name, PREFIX) {
            let _ = Command::new("ip").args(["netns", "del", name]).output();
        }
    }
    for line in listed(&["-o", "link", "show", "type", "bridge"]).lines() {
        let name = line.split(": ").nth(1).unwrap_or_default();
        if dead(name, "spb") {
            let _ = Command::new("ip").args(["link", "del", name]).output();
        }
    }
}

/// How a slow link treats each packet a host sends over it ([`TestNetwork::slow_link`]).
#[derive(Clone, Copy, Debug)]
pub struct LinkShape {
    /// How long each packet is held...
    pub delay: Duration,
    /// ...give or take up to this much, uniformly; packets still leave in order (a packet is
    /// never sent before one held before it).
    pub jitter: Duration,
    /// The share of packets dropped, 0 to 1.
    pub loss: f64,
}

/// What a slow link did.
#[derive(Clone, Copy, Debug, Default)]
pub struct LinkStats {
    /// Packets held and sent.
    pub sent: u64,
    /// Packets dropped.
    pub dropped: u64,
}

/// A slow link in force; [`SlowLink::stop`] (or dropping it) removes its rule and sends
/// what it still holds.
pub struct SlowLink {
    host: String,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<LinkStats>>,
}

impl SlowLink {
    /// Ends the slow link: its rule removed, the packets it holds sent.
    pub fn stop(mut self) -> LinkStats {
        self.end()
    }

    fn end(&mut self) -> LinkStats {
        let _ = Command::new("ip")
            .args(["netns", "exec", &self.host, "iptables-nft", "-F", "OUTPUT"])
            .output();
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        self.thread
            .take()
            .map(|t| t.join().expect("the slow link's thread panicked"))
            .unwrap_or_default()
    }
}

impl Drop for SlowLink {
    fn drop(&mut self) {
        self.end();
    }
}

/// The slow link's thread: enters the host's namespace, binds NFQUEUE 0 there (told on
/// `bound`), then holds or drops every packet queued to it until `stop`, when it sends what
/// it holds and unbinds.
fn hold_packets(
    namespace: &std::path::Path,
    shape: LinkShape,
    stop: &std::sync::atomic::AtomicBool,
    bound: std::sync::mpsc::Sender<std::io::Result<()>>,
) -> LinkStats {
    let open = || -> std::io::Result<nfq::Queue> {
        let file = std::fs::File::open(namespace)?;
        // SAFETY: setns with a valid descriptor changes only this thread's namespace.
        if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        let mut queue = nfq::Queue::open()?;
        queue.bind(0)?;
        queue.set_copy_range(0, 0)?;
        queue.set_queue_max_len(0, 1 << 16)?;
        queue.set_fail_open(0, true)?;
        queue.set_nonblocking(true);
        Ok(queue)
    };
    let mut queue = match open() {
        Ok(queue) => {
            let _ = bound.send(Ok(()));
            queue
        }
        Err(error) => {
            let _ = bound.send(Err(error));
            return LinkStats::default();
        }
    };
    let mut stats = LinkStats::default();
    let mut held: std::collections::VecDeque<(std::time::Instant, nfq::Message)> =
        Default::default();
    // xorshift64*, seeded by the namespace's name: the same trial draws the same delays.
    let mut state = namespace
        .to_string_lossy()
        .bytes()
        .fold(0x9E37_79B9_7F4A_7C15u64, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x100_0000_01B3)
        });
    let mut uniform = move || {
        state ^= state >> 12;
        state ^= state << 25;
        state ^= state >> 27;
        (state.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 11) as f64 / (1u64 << 53) as f64
    };
    let mut last_due = std::time::Instant::now();
    loop {
        let stopping = stop.load(std::sync::atomic::Ordering::Relaxed);
        match queue.recv() {
            Ok(mut message) => {
                if !stopping && uniform() < shape.loss {
                    message.set_verdict(nfq::Verdict::Drop);
                    queue.verdict(message).expect("a verdict");
                    stats.dropped += 1;
                } else {
                    let spread = shape.jitter.as_secs_f64() * (2.0 * uniform() - 1.0);
                    let hold =
                        Duration::from_secs_f64((shape.delay.as_secs_f64() + spread).max(0.0));
                    last_due = last_due.max(std::time::Instant::now() + hold);
                    held.push_back((last_due, message));
                }
                continue;
            }
            Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(error) => panic!("the slow link's queue: {error}"),
        }
        let now = std::time::Instant::now();
        while held.front().is_some_and(|(due, _)| stopping || *due <= now) {
            let (_, mut message) = held.pop_front().expect("a held packet");
            message.set_verdict(nfq::Verdict::Accept);
            queue.verdict(message).expect("a verdict");
            stats.sent += 1;
        }
        if stopping {
            let _ = queue.unbind(0);
            return stats;
        }
        std::thread::sleep(Duration::from_micros(500));
    }
}
