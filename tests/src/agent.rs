//! The real agent as a child process inside a test node's namespace.

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use palisade_agent::{source::dir::DirSource, status::Status};

use crate::topology::{Created, forget, remember};

/// The `palisade` binary: $PALISADE_AGENT, or the workspace's debug build.
pub fn agent_bin() -> anyhow::Result<PathBuf> {
    let path = match std::env::var_os("PALISADE_AGENT") {
        Some(p) => PathBuf::from(p),
        None => PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/debug/palisade"),
    };
    path.canonicalize().with_context(|| {
        format!(
            "agent binary {} missing: cargo build -p palisade-agent (cargo xtask test does)",
            path.display()
        )
    })
}

pub struct AgentSpec {
    pub bin: PathBuf,
    pub node_netns: String,
    pub source: PathBuf,
    pub config: Option<PathBuf>,
    pub pin_root: PathBuf,
    pub status_file: PathBuf,
    pub stdout: PathBuf,
    pub stderr: PathBuf,
    pub extra: Vec<String>,
    /// `--node-name`.
    pub node_name: String,
    /// `--interface-prefix` values (empty: the agent picks veths itself).
    pub interface_prefixes: Vec<String>,
    /// A command the agent runs under, inside the node's namespace (e.g.
    /// `setpriv` with a capability set); empty: none.
    pub wrapper: Vec<String>,
}

impl AgentSpec {
    /// The usual layout under one work directory: `source/`, `status.json`,
    /// `deny.jsonl` (stdout), `agent.log` (stderr); no config, no extra flags.
    pub fn in_dir(bin: PathBuf, node_netns: &str, dir: &Path, pin_root: PathBuf) -> Self {
        Self {
            bin,
            node_netns: node_netns.to_string(),
            source: dir.join("source"),
            config: None,
            pin_root,
            status_file: dir.join("status.json"),
            stdout: dir.join("deny.jsonl"),
            stderr: dir.join("agent.log"),
            extra: Vec::new(),
            node_name: crate::topology::NODE_NAME.into(),
            interface_prefixes: vec![crate::topology::IF_PREFIX.into()],
            wrapper: Vec::new(),
        }
    }
}

pub struct AgentProcess {
    pub spec: AgentSpec,
    /// The API server's kubeconfig: the agent reads it instead of
    /// `spec.source`.
    kubeconfig: Option<PathBuf>,
    child: Option<Child>,
}

impl AgentProcess {
    pub fn start(spec: AgentSpec) -> anyhow::Result<Self> {
        Self::start_with(spec, None)
    }

    /// The agent with the API server of `kubeconfig` as its source
    /// (`spec.source` unused).
    pub fn start_with_api_server(spec: AgentSpec, kubeconfig: PathBuf) -> anyhow::Result<Self> {
        Self::start_with(spec, Some(kubeconfig))
    }

    fn start_with(spec: AgentSpec, kubeconfig: Option<PathBuf>) -> anyhow::Result<Self> {
        let mut p = Self {
            spec,
            kubeconfig,
            child: None,
        };
        p.restart()?;
        Ok(p)
    }

    /// Starts the agent (again), appending to its logs.
    pub fn restart(&mut self) -> anyhow::Result<()> {
        let s = &self.spec;
        let open = |p: &Path| {
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(p)
        };
        let mut cmd = Command::new("nsenter");
        cmd.arg(format!("--net=/run/netns/{}", s.node_netns))
            .args(&s.wrapper)
            .arg(&s.bin)
            .args(["agent", "--node-name", &s.node_name])
            .args(
                s.interface_prefixes
                    .iter()
                    .flat_map(|p| ["--interface-prefix", p.as_str()]),
            )
            .arg("--pin-root")
            .arg(&s.pin_root)
            .arg("--status-file")
            .arg(&s.status_file)
            .args(&s.extra)
            .stdin(Stdio::null())
            .stdout(open(&s.stdout)?)
            .stderr(open(&s.stderr)?);
        if let Some(c) = &s.config {
            cmd.arg("--config").arg(c);
        }
        if let Some(k) = &self.kubeconfig {
            cmd.env("KUBECONFIG", k)
                .env_remove("KUBERNETES_SERVICE_HOST")
                .env_remove("KUBERNETES_SERVICE_PORT");
        } else {
            cmd.arg("--source").arg(&s.source);
        }
        let _ = std::fs::remove_file(&s.status_file);
        let child = cmd
            .spawn()
            .context("starting the agent (nsenter from util-linux)")?;
        remember(Created::Process(child.id()));
        remember(Created::Pins(s.pin_root.clone()));
        self.child = Some(child);
        Ok(())
    }

    /// Sends a signal and waits for the process to end.
    pub fn stop(&mut self, signal: i32) -> anyhow::Result<()> {
        let Some(mut child) = self.child.take() else {
            return Ok(());
        };
        forget(&Created::Process(child.id()));
        // SAFETY: kill(2) on our own child.
        unsafe { libc::kill(child.id() as i32, signal) };
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if child.try_wait()?.is_some() {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = child.kill();
        let _ = child.wait();
        bail!("the agent did not stop within 10s of signal {signal}")
    }

    /// Waits until the agent has programmed the current source directory
    /// (from an API server: what it listed) and attached to every interface
    /// in `ifaces`.
    pub fn wait_programmed(&self, ifaces: &[String], timeout: Duration) -> anyhow::Result<Status> {
        let want = match self.kubeconfig {
            None => Some(format!(
                "{:016x}",
                DirSource::new(&self.spec.source).read()?.digest
            )),
            // Ready only once every required kind was listed.
            Some(_) => None,
        };
        let deadline = Instant::now() + timeout;
        let mut last = None;
        while Instant::now() < deadline {
            if let Ok(st) = Status::read(&self.spec.status_file) {
                if st.ready
                    && want.as_ref().is_none_or(|w| st.source_digest == *w)
                    && ifaces.iter().all(|i| st.attached.contains(i))
                    && st.cgroups_pending.is_empty()
                {
                    return Ok(st);
                }
                last = Some(st);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        bail!("the agent did not program the source within {timeout:?} (last status: {last:?})")
    }

    /// The agent's process id while it runs (`nsenter` execs it, so this
    /// is the agent itself).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Whether the agent has exited (crashed, or killed by the OOM killer).
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.spec.stderr).unwrap_or_default()
    }
}

impl Drop for AgentProcess {
    fn drop(&mut self) {
        let _ = self.stop(libc::SIGTERM);
        let _ = Command::new(&self.spec.bin)
            .args(["uninstall", "--pin-root"])
            .arg(&self.spec.pin_root)
            .stderr(Stdio::null())
            .status();
        forget(&Created::Pins(self.spec.pin_root.clone()));
    }
}
