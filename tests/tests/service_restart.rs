//! Restarts with Service traffic: a long-lived connection through a Service
//! (kube-proxy-style DNAT in the node's netfilter, the client's egress
//! judged by the backend it reaches) survives the agent being killed and
//! stopped, and a client the backend's policy denies stays denied through
//! the Service all along. Privileged: root, netns, nftables, eBPF.

use std::{
    io::{Read, Write},
    net::{Ipv4Addr, SocketAddr, TcpStream},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::Duration,
};

use palisade_tests::{
    agent::{AgentProcess, AgentSpec, agent_bin},
    fixtures,
    kubeproxy::{self, ServicePort},
    netns,
    topology::Cluster,
};

const VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 7, 7);

/// b admits a only; a may send only to b on TCP 80, so reaching b through
/// the Service (port 8080) needs the Service judged by its backend.
const SOURCE: &str = r#"
apiVersion: v1
kind: Namespace
metadata: {name: x}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: b-from-a, namespace: x}
spec:
  podSelector: {matchLabels: {pod: b}}
  ingress: [{from: [{podSelector: {matchLabels: {pod: a}}}]}]
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: a-to-b, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  policyTypes: [Egress]
  egress: [{to: [{podSelector: {matchLabels: {pod: b}}}], ports: [{port: 80}]}]
---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: x}
spec:
  clusterIP: 10.96.7.7
  clusterIPs: [10.96.7.7]
  ports: [{name: http, port: 8080, targetPort: 80, protocol: TCP}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: web-1, namespace: x, labels: {kubernetes.io/service-name: web}}
addressType: IPv4
endpoints: [{addresses: ["10.9.2.11"], conditions: {ready: true}}]
ports: [{name: http, port: 80, protocol: TCP}]
"#;

#[test]
fn a_connection_through_a_service_survives_restarts_and_a_denied_one_stays_denied()
-> anyhow::Result<()> {
    palisade_tests::fixtures::require_root();
    let run = format!("s{}", std::process::id() % 100_000);
    let mut cluster = Cluster::new(&run, palisade_tests::scenario::Family::Ipv4)?;
    let (ipa, ipb, ipc) = (
        Ipv4Addr::new(10, 9, 2, 10),
        Ipv4Addr::new(10, 9, 2, 11),
        Ipv4Addr::new(10, 9, 2, 12),
    );
    let a = cluster.add_wired("x/a", Some(ipa), None, Vec::new())?;
    let b = cluster.add_wired("x/b", Some(ipb), None, Vec::new())?;
    let c = cluster.add_wired("x/c", Some(ipc), None, Vec::new())?;
    let (na, nb, nc) = (
        a.netns.clone().unwrap_or_default(),
        b.netns.clone().unwrap_or_default(),
        c.netns.clone().unwrap_or_default(),
    );
    fixtures::tcp_echo(&nb, 80)?;
    kubeproxy::apply(
        &cluster.node_netns,
        &[ServicePort {
            service: "x/web".into(),
            addr: VIP.into(),
            proto: "tcp",
            port: 8080,
            backends: vec![SocketAddr::from((ipb, 80))],
        }],
    )?;

    let dir = std::env::temp_dir().join(format!("palisade-svc-restart-{run}"));
    let source = dir.join("source");
    std::fs::create_dir_all(&source)?;
    std::fs::write(
        source.join("cluster.yaml"),
        format!(
            "{SOURCE}{}{}{}",
            fixtures::pod_yaml("x", "a", ipa),
            fixtures::pod_yaml("x", "b", ipb),
            fixtures::pod_yaml("x", "c", ipc)
        ),
    )?;
    let mut agent = AgentProcess::start(AgentSpec {
        extra: vec!["--poll-ms".into(), "50".into()],
        ..AgentSpec::in_dir(
            agent_bin()?,
            &cluster.node_netns,
            &dir,
            format!("/sys/fs/bpf/palisade-svc-restart-{run}").into(),
        )
    })?;
    let ifaces = cluster.interfaces();
    agent.wait_programmed(&ifaces, Duration::from_secs(20))?;

    let vip = SocketAddr::from((VIP, 8080));
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, err, tries, through) = (
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicU64::new(0)),
    );
    let stream = {
        let (stop, ok, err) = (stop.clone(), ok.clone(), err.clone());
        std::thread::spawn(move || {
            netns::enter(&na).expect("netns a");
            let mut s = TcpStream::connect_timeout(&vip, Duration::from_secs(1))
                .expect("a reaches b through the Service");
            s.set_read_timeout(Some(Duration::from_secs(1)))
                .expect("timeout");
            let mut buf = [0u8; 8];
            while !stop.load(Ordering::Relaxed) {
                let good = s.write_all(b"palisade").is_ok()
                    && s.read_exact(&mut buf).is_ok()
                    && &buf == b"palisade";
                if good { &ok } else { &err }.fetch_add(1, Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(10));
            }
        })
    };
    let denied = {
        let (stop, tries, through) = (stop.clone(), tries.clone(), through.clone());
        std::thread::spawn(move || {
            netns::enter(&nc).expect("netns c");
            while !stop.load(Ordering::Relaxed) {
                tries.fetch_add(1, Ordering::Relaxed);
                if TcpStream::connect_timeout(&vip, Duration::from_millis(100)).is_ok() {
                    through.fetch_add(1, Ordering::Relaxed);
                }
            }
        })
    };

    let pause = || std::thread::sleep(Duration::from_millis(700));
    pause();
    agent.stop(libc::SIGKILL)?;
    pause();
    agent.restart()?;
    agent.wait_programmed(&ifaces, Duration::from_secs(20))?;
    pause();
    agent.stop(libc::SIGTERM)?;
    pause();
    agent.restart()?;
    agent.wait_programmed(&ifaces, Duration::from_secs(20))?;
    pause();
    stop.store(true, Ordering::Relaxed);
    stream.join().expect("stream thread");
    denied.join().expect("denied thread");

    let (ok, err) = (ok.load(Ordering::Relaxed), err.load(Ordering::Relaxed));
    let (tries, through) = (
        tries.load(Ordering::Relaxed),
        through.load(Ordering::Relaxed),
    );
    eprintln!(
        "through the Service: {ok} round trips ok, {err} failed; denied client {through}/{tries}"
    );
    assert!(ok > 100, "the stream ran: {ok}");
    assert_eq!(err, 0, "the connection through the Service lost nothing");
    assert!(tries > 5, "the denied client kept trying: {tries}");
    assert_eq!(
        through, 0,
        "the denied client never got through the Service"
    );
    drop(agent);
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
