//! Restarts: while the agent is killed (SIGKILL) or stopped (SIGTERM) and
//! started again, an allowed TCP stream and a UDP request loop lose nothing,
//! a denied client never gets through, and the restarted agent adopts the
//! pinned state without rewriting it. Privileged: root, netns, eBPF.

use std::{
    io::{Read, Write},
    net::{Ipv4Addr, SocketAddr, TcpStream, UdpSocket},
    path::PathBuf,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::Duration,
};

use palisade_tests::{
    agent::{AgentProcess, AgentSpec, agent_bin},
    fixtures, netns, probe,
    scenario::PortSpec,
    topology::Cluster,
};

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
"#;

#[derive(Default)]
struct Counters {
    tcp_ok: AtomicU64,
    tcp_err: AtomicU64,
    udp_ok: AtomicU64,
    udp_lost: AtomicU64,
    denied_through: AtomicU64,
    denied_tries: AtomicU64,
}

#[test]
fn restarts_lose_nothing_and_open_nothing() -> anyhow::Result<()> {
    palisade_tests::fixtures::require_root();
    let bin = agent_bin()?;
    let run = format!("r{}", std::process::id() % 100_000);
    let mut cluster = Cluster::new(&run, palisade_tests::scenario::Family::Ipv4)?;
    let ports = vec![PortSpec {
        port: 81,
        protocol: "UDP".into(),
        name: None,
    }];
    let (ipa, ipb, ipc) = (
        Ipv4Addr::new(10, 9, 0, 10),
        Ipv4Addr::new(10, 9, 0, 11),
        Ipv4Addr::new(10, 9, 0, 12),
    );
    let a = cluster.add_wired("x/a", Some(ipa), None, Vec::new())?;
    let b = cluster.add_wired("x/b", Some(ipb), None, ports.clone())?;
    let c = cluster.add_wired("x/c", Some(ipc), None, Vec::new())?;
    let (na, nb, nc) = (
        a.netns.clone().unwrap_or_default(),
        b.netns.clone().unwrap_or_default(),
        c.netns.clone().unwrap_or_default(),
    );
    fixtures::tcp_echo(&nb, 80)?;
    let _udp = probe::listen(Some(&nb), &ports)?;

    let dir = std::env::temp_dir().join(format!("palisade-restart-{run}"));
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
            bin,
            &cluster.node_netns,
            &dir,
            format!("/sys/fs/bpf/palisade-restart-{run}").into(),
        )
    })?;
    let ifaces = cluster.interfaces();
    let first = agent.wait_programmed(&ifaces, Duration::from_secs(20))?;
    assert!(first.last_sync_ops > 0);

    let stop = Arc::new(AtomicBool::new(false));
    let n = Arc::new(Counters::default());
    let mut threads = Vec::new();
    {
        // An allowed TCP stream a -> b:80, one round trip every 10 ms.
        let (stop, n, na) = (stop.clone(), n.clone(), na.clone());
        threads.push(std::thread::spawn(move || {
            netns::enter(&na).expect("netns a");
            let mut s =
                TcpStream::connect_timeout(&SocketAddr::from((ipb, 80)), Duration::from_secs(1))
                    .expect("connect a -> b");
            s.set_read_timeout(Some(Duration::from_secs(1)))
                .expect("timeout");
            let mut buf = [0u8; 8];
            while !stop.load(Ordering::Relaxed) {
                let ok = s.write_all(b"palisade").is_ok()
                    && s.read_exact(&mut buf).is_ok()
                    && &buf == b"palisade";
                if ok {
                    n.tcp_ok.fetch_add(1, Ordering::Relaxed)
                } else {
                    n.tcp_err.fetch_add(1, Ordering::Relaxed)
                };
                std::thread::sleep(Duration::from_millis(10));
            }
        }));
    }
    {
        // An allowed UDP request loop a -> b:81.
        let (stop, n, na) = (stop.clone(), n.clone(), na.clone());
        threads.push(std::thread::spawn(move || {
            netns::enter(&na).expect("netns a");
            let s = UdpSocket::bind("0.0.0.0:0").expect("bind");
            s.connect((ipb, 81)).expect("connect");
            s.set_read_timeout(Some(Duration::from_millis(500)))
                .expect("timeout");
            let mut buf = [0u8; 64];
            while !stop.load(Ordering::Relaxed) {
                let ok = s.send(b"ping").is_ok()
                    && s.recv(&mut buf).is_ok_and(|len| &buf[..len] == b"ping");
                if ok {
                    n.udp_ok.fetch_add(1, Ordering::Relaxed)
                } else {
                    n.udp_lost.fetch_add(1, Ordering::Relaxed)
                };
                std::thread::sleep(Duration::from_millis(10));
            }
        }));
    }
    {
        // A denied client c -> b:80, trying all the time.
        let (stop, n) = (stop.clone(), n.clone());
        threads.push(std::thread::spawn(move || {
            netns::enter(&nc).expect("netns c");
            while !stop.load(Ordering::Relaxed) {
                n.denied_tries.fetch_add(1, Ordering::Relaxed);
                if TcpStream::connect_timeout(
                    &SocketAddr::from((ipb, 80)),
                    Duration::from_millis(100),
                )
                .is_ok()
                {
                    n.denied_through.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }

    let pause = || std::thread::sleep(Duration::from_millis(700));
    pause();
    agent.stop(libc::SIGKILL)?;
    pause();
    agent.restart()?;
    let after_kill = agent.wait_programmed(&ifaces, Duration::from_secs(20))?;
    pause();
    agent.stop(libc::SIGTERM)?;
    pause();
    agent.restart()?;
    let after_term = agent.wait_programmed(&ifaces, Duration::from_secs(20))?;
    pause();
    stop.store(true, Ordering::Relaxed);
    for t in threads {
        t.join()
            .map_err(|_| anyhow::anyhow!("traffic thread panicked"))?;
    }

    let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
    eprintln!(
        "tcp {} ok / {} err, udp {} ok / {} lost, denied {} through / {} tries",
        get(&n.tcp_ok),
        get(&n.tcp_err),
        get(&n.udp_ok),
        get(&n.udp_lost),
        get(&n.denied_through),
        get(&n.denied_tries)
    );
    assert!(
        get(&n.tcp_ok) > 100 && get(&n.udp_ok) > 100,
        "traffic flowed"
    );
    assert_eq!(get(&n.tcp_err), 0, "the allowed TCP stream lost nothing");
    assert_eq!(get(&n.udp_lost), 0, "the allowed UDP loop lost nothing");
    assert!(get(&n.denied_tries) > 10);
    assert_eq!(
        get(&n.denied_through),
        0,
        "the denied client never got through"
    );
    assert_eq!(
        after_kill.last_sync_ops, 0,
        "after SIGKILL the pinned maps were adopted as they were"
    );
    assert_eq!(after_term.last_sync_ops, 0, "after SIGTERM likewise");
    assert!(agent.log().contains("adopted pinned maps"));
    drop(agent);
    let _ = std::fs::remove_dir_all(&dir);
    drop(cluster);
    Ok(())
}

#[test]
fn on_exit_remove_fails_open_and_keep_fails_closed() -> anyhow::Result<()> {
    palisade_tests::fixtures::require_root();
    let bin = agent_bin()?;
    let run = format!("e{}", std::process::id() % 100_000);
    let mut cluster = Cluster::new(&run, palisade_tests::scenario::Family::Ipv4)?;
    let (ipb, ipc) = (Ipv4Addr::new(10, 9, 1, 11), Ipv4Addr::new(10, 9, 1, 12));
    let web = vec![PortSpec {
        port: 80,
        protocol: "TCP".into(),
        name: None,
    }];
    let b = cluster.add_wired("x/b", Some(ipb), None, web.clone())?;
    let c = cluster.add_wired("x/c", Some(ipc), None, Vec::new())?;
    let _l = probe::listen(b.netns.as_deref(), &web)?;
    let nc = c.netns.clone().unwrap_or_default();
    let dir = std::env::temp_dir().join(format!("palisade-onexit-{run}"));
    let source = dir.join("source");
    std::fs::create_dir_all(&source)?;
    std::fs::write(
        source.join("cluster.yaml"),
        format!(
            "{SOURCE}{}{}",
            fixtures::pod_yaml("x", "b", ipb),
            fixtures::pod_yaml("x", "c", ipc)
        ),
    )?;
    let c_to_b =
        || fixtures::connects(&nc, SocketAddr::from((ipb, 80)), Duration::from_millis(300));
    for (mode, open_after) in [("keep", false), ("remove", true)] {
        let pin_root = PathBuf::from(format!("/sys/fs/bpf/palisade-onexit-{run}-{mode}"));
        let mut agent = AgentProcess::start(AgentSpec {
            extra: vec![
                "--on-exit".into(),
                mode.into(),
                "--listen".into(),
                "off".into(),
            ],
            ..AgentSpec::in_dir(bin.clone(), &cluster.node_netns, &dir, pin_root.clone())
        })?;
        agent.wait_programmed(&cluster.interfaces(), Duration::from_secs(20))?;
        assert!(!c_to_b(), "c -> b denied while the agent runs ({mode})");
        agent.stop(libc::SIGTERM)?;
        // The kernel releases links a moment after the last fd closes: give
        // the state a second to settle, then it must hold.
        let deadline = std::time::Instant::now() + Duration::from_secs(1);
        while c_to_b() != open_after && std::time::Instant::now() < deadline {}
        for _ in 0..3 {
            assert_eq!(
                c_to_b(),
                open_after,
                "after a graceful stop with on-exit {mode}"
            );
        }
        assert_eq!(pin_root.exists(), !open_after, "pins after on-exit {mode}");
        drop(agent);
    }
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

#[test]
fn an_older_layout_is_replaced_without_a_gap() -> anyhow::Result<()> {
    palisade_tests::fixtures::require_root();
    let bin = agent_bin()?;
    let run = format!("l{}", std::process::id() % 100_000);
    let mut cluster = Cluster::new(&run, palisade_tests::scenario::Family::Ipv4)?;
    let (ipa, ipb, ipc) = (
        Ipv4Addr::new(10, 9, 2, 10),
        Ipv4Addr::new(10, 9, 2, 11),
        Ipv4Addr::new(10, 9, 2, 12),
    );
    let web = vec![PortSpec {
        port: 80,
        protocol: "TCP".into(),
        name: None,
    }];
    let a = cluster.add_wired("x/a", Some(ipa), None, Vec::new())?;
    let b = cluster.add_wired("x/b", Some(ipb), None, web.clone())?;
    let c = cluster.add_wired("x/c", Some(ipc), None, Vec::new())?;
    let _l = probe::listen(b.netns.as_deref(), &web)?;
    let dir = std::env::temp_dir().join(format!("palisade-layout-{run}"));
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
    let reach = |from: &Option<String>| {
        fixtures::connects(
            from.as_deref().unwrap_or_default(),
            SocketAddr::from((ipb, 80)),
            Duration::from_millis(300),
        )
    };
    let pin_root = PathBuf::from(format!("/sys/fs/bpf/palisade-layout-{run}"));
    let mut agent = AgentProcess::start(AgentSpec {
        extra: vec!["--listen".into(), "off".into()],
        ..AgentSpec::in_dir(bin, &cluster.node_netns, &dir, pin_root.clone())
    })?;
    agent.wait_programmed(&cluster.interfaces(), Duration::from_secs(20))?;
    agent.stop(libc::SIGTERM)?;
    // What an agent of an older layout would have left: its pin tree, its
    // links on every veth, still enforcing.
    let current = pin_root.join(format!("v{}", palisade_common::LAYOUT_VERSION));
    let older = pin_root.join("v0");
    std::fs::rename(&current, &older)?;
    assert!(
        !reach(&c.netns),
        "the older programs enforce while no agent runs"
    );
    agent.restart()?;
    agent.wait_programmed(&cluster.interfaces(), Duration::from_secs(20))?;
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while older.exists() && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(
        !older.exists(),
        "the older pin tree is removed once the new programs are attached"
    );
    assert!(current.exists());
    assert!(
        reach(&a.netns),
        "allowed traffic flows under the new layout"
    );
    assert!(!reach(&c.netns), "denied traffic stays denied");
    drop(agent);
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
