//! The DaemonSet's capability list, proven (issue #20): the agent runs as
//! uid 0 with exactly the capabilities `deploy/base/daemonset.yaml` adds
//! (read here, so the test follows the file; `setpriv` limits the bounding
//! set, which for uid 0 is what an exec'd process gets, with no_new_privs as
//! `allowPrivilegeEscalation: false` sets it) and enforces a policy; then,
//! for each listed capability in turn, the agent without it must fail to
//! enforce, or the capability is unnecessary and the test says so.
//! Privileged: root, netns, eBPF, setpriv (util-linux).

use std::{
    net::{Ipv4Addr, SocketAddr},
    path::PathBuf,
    time::Duration,
};

use palisade_tests::{
    agent::{AgentProcess, AgentSpec, agent_bin},
    fixtures,
    topology::Cluster,
};

const WEB: Ipv4Addr = Ipv4Addr::new(10, 9, 0, 10);
const CLIENT: Ipv4Addr = Ipv4Addr::new(10, 9, 0, 11);

/// `web` takes no ingress; everyone's egress is open.
const SOURCE: &str = r#"
apiVersion: v1
kind: Namespace
metadata: {name: x}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: web-closed, namespace: x}
spec:
  podSelector: {matchLabels: {pod: web}}
  policyTypes: [Ingress]
"#;

/// The agent container's added capabilities, from the shipped manifest.
fn daemonset_capabilities() -> Vec<String> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../deploy/base/daemonset.yaml");
    let ds: serde_yaml::Value =
        serde_yaml::from_str(&std::fs::read_to_string(&path).expect("daemonset.yaml"))
            .expect("daemonset YAML");
    let containers = ds["spec"]["template"]["spec"]["containers"]
        .as_sequence()
        .expect("containers");
    let agent = containers
        .iter()
        .find(|c| c["name"] == "agent")
        .expect("the agent container");
    let sc = &agent["securityContext"];
    assert_eq!(sc["capabilities"]["drop"][0], "ALL", "all others dropped");
    assert_eq!(sc["allowPrivilegeEscalation"], false);
    sc["capabilities"]["add"]
        .as_sequence()
        .expect("capabilities.add")
        .iter()
        .map(|c| c.as_str().expect("name").to_string())
        .collect()
}

/// `setpriv` keeping exactly `caps` (Kubernetes names, e.g. NET_ADMIN).
fn under(caps: &[String]) -> Vec<String> {
    let set: String = std::iter::once("-all".to_string())
        .chain(caps.iter().map(|c| format!("+{}", c.to_lowercase())))
        .collect::<Vec<_>>()
        .join(",");
    vec![
        "setpriv".into(),
        "--no-new-privs".into(),
        "--inh-caps=-all".into(),
        format!("--bounding-set={set}"),
        "--".into(),
    ]
}

/// What one run of the agent under `caps` achieved.
#[derive(Debug, PartialEq, Eq)]
enum Outcome {
    /// Programmed, attached, and the policy holds (denied and allowed).
    Enforced,
    /// Why not, from the status and the log.
    Failed(String),
}

fn run_agent(cluster: &Cluster, bin: &std::path::Path, tag: &str, caps: &[String]) -> Outcome {
    let dir = std::env::temp_dir().join(format!("palisade-caps-{}-{tag}", cluster.run));
    let source = dir.join("source");
    std::fs::create_dir_all(&source).expect("dir");
    let mut text = SOURCE.to_string();
    for (name, addr) in [("web", WEB), ("client", CLIENT)] {
        text += &fixtures::pod_yaml("x", name, addr);
    }
    fixtures::write_source(&source, &text).expect("source");
    let pin_root = PathBuf::from(format!("/sys/fs/bpf/palisade-caps-{}-{tag}", cluster.run));
    let mut agent = AgentProcess::start(AgentSpec {
        wrapper: under(caps),
        ..AgentSpec::in_dir(bin.to_path_buf(), &cluster.node_netns, &dir, pin_root)
    })
    .expect("start the agent");
    let outcome = match agent.wait_programmed(&cluster.interfaces(), Duration::from_secs(10)) {
        Err(e) => {
            let log = agent.log();
            // The error itself, not the backtrace after it.
            let last: Vec<&str> = log
                .lines()
                .skip_while(|l| !l.starts_with("Error:"))
                .filter(|l| !l.trim().is_empty())
                .take_while(|l| !l.contains("acktrace") && !l.starts_with("   0:"))
                .take(6)
                .collect();
            Outcome::Failed(format!(
                "{e:#}; exited: {:?}; log: {last:?}",
                agent.exited()
            ))
        }
        Ok(_) => {
            let t = Duration::from_millis(700);
            let denied = !fixtures::connects(&client_ns(cluster), SocketAddr::from((WEB, 80)), t);
            let allowed = fixtures::connects(&web_ns(cluster), SocketAddr::from((CLIENT, 80)), t);
            if denied && allowed {
                Outcome::Enforced
            } else {
                Outcome::Failed(format!(
                    "programmed, but denied {denied}, allowed {allowed}"
                ))
            }
        }
    };
    drop(agent);
    let _ = std::fs::remove_dir_all(&dir);
    outcome
}

fn web_ns(c: &Cluster) -> String {
    c.hosts["x/web"].netns.clone().unwrap_or_default()
}

fn client_ns(c: &Cluster) -> String {
    c.hosts["x/client"].netns.clone().unwrap_or_default()
}

#[test]
fn the_daemonsets_capabilities_suffice_and_each_is_needed() -> anyhow::Result<()> {
    palisade_tests::fixtures::require_root();
    let bin = agent_bin()?;
    let caps = daemonset_capabilities();
    assert!(!caps.is_empty());
    let mut cluster = Cluster::new(
        &format!("k{}", std::process::id() % 100_000),
        palisade_tests::scenario::Family::Ipv4,
    )?;
    cluster.add_wired("x/web", Some(WEB), None, Vec::new())?;
    cluster.add_wired("x/client", Some(CLIENT), None, Vec::new())?;
    fixtures::tcp_echo(&web_ns(&cluster), 80)?;
    fixtures::tcp_echo(&client_ns(&cluster), 80)?;

    assert_eq!(
        run_agent(&cluster, &bin, "all", &caps),
        Outcome::Enforced,
        "the agent must enforce with exactly {caps:?}"
    );
    let mut unnecessary = Vec::new();
    for (i, cap) in caps.iter().enumerate() {
        let fewer: Vec<String> = caps.iter().filter(|c| *c != cap).cloned().collect();
        match run_agent(&cluster, &bin, &format!("no{i}"), &fewer) {
            Outcome::Enforced => unnecessary.push(cap.clone()),
            Outcome::Failed(why) => eprintln!("without {cap}: fails as it must ({why})"),
        }
    }
    assert!(
        unnecessary.is_empty(),
        "the agent enforces without {unnecessary:?}: drop them from deploy/base/daemonset.yaml"
    );
    Ok(())
}

/// A node without bpffs (a kind node, before the init container mounts
/// it): the agent, which may not mount one itself, stays up, not ready,
/// and says why on /readyz and in its status, instead of crash-looping.
#[test]
fn without_bpffs_the_agent_stays_up_not_ready_and_says_why() -> anyhow::Result<()> {
    use std::io::{Read as _, Write as _};
    palisade_tests::fixtures::require_root();
    let bin = agent_bin()?;
    let caps = daemonset_capabilities();
    let cluster = Cluster::new(
        &format!("u{}", std::process::id() % 100_000),
        palisade_tests::scenario::Family::Ipv4,
    )?;
    let dir = std::env::temp_dir().join(format!("palisade-caps-{}-nobpffs", cluster.run));
    std::fs::create_dir_all(dir.join("source"))?;
    fixtures::write_source(&dir.join("source"), SOURCE)?;
    // A mount namespace of its own with /sys/fs/bpf unmounted, then the
    // DaemonSet's capabilities (no SYS_ADMIN, so no mount).
    let mut wrapper: Vec<String> = [
        "unshare",
        "--mount",
        "--propagation",
        "private",
        "sh",
        "-c",
        "while mountpoint -q /sys/fs/bpf; do umount -l /sys/fs/bpf || exit 1; done; exec \"$@\"",
        "sh",
    ]
    .map(String::from)
    .to_vec();
    wrapper.extend(under(&caps));
    let pin_root = PathBuf::from("/sys/fs/bpf/palisade-caps-nobpffs");
    let mut agent = AgentProcess::start(AgentSpec {
        wrapper,
        ..AgentSpec::in_dir(bin, &cluster.node_netns, &dir, pin_root)
    })?;
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let mut status = None;
    while std::time::Instant::now() < deadline {
        if let Ok(s) = palisade_agent::status::Status::read(&agent.spec.status_file)
            && s.unsupported.is_some()
        {
            status = Some(s);
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let status = status.unwrap_or_else(|| panic!("no unsupported status; log: {}", agent.log()));
    let why = status.unsupported.clone().unwrap_or_default();
    assert!(!status.ready);
    assert!(why.contains("no bpffs"), "{why}");
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        agent.exited().is_none(),
        "the agent stays up: {}",
        agent.log()
    );
    let readyz = palisade_tests::netns::in_netns(&cluster.node_netns, || {
        let mut s = std::net::TcpStream::connect("127.0.0.1:9965")?;
        write!(s, "GET /readyz HTTP/1.0\r\n\r\n")?;
        let mut out = String::new();
        s.read_to_string(&mut out)?;
        Ok(out)
    })?;
    assert!(
        readyz.starts_with("HTTP/1.0 503") && readyz.contains("no bpffs"),
        "{readyz}"
    );
    assert!(
        !agent.log().contains("attach failed"),
        "nothing is attempted in the kernel"
    );
    drop(agent);
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
