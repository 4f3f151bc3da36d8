//! Real CNI plugins run the way a container runtime runs them: the protocol's
//! environment and stdin, each plugin of a chain given the previous one's
//! result as `prevResult`, in the node's network namespace (their "host"),
//! for a pod namespace named by absolute path.

use std::{
    io::Write as _,
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use anyhow::{Context as _, bail};
use serde_json::{Value, json};

/// Where Debian's containernetworking-plugins puts ptp and host-local.
pub const PLUGIN_DIR: &str = "/usr/lib/cni";

/// A CNI_PATH of its own: the Debian plugins, and the agent binary under
/// the plugin's name.
pub struct CniPath {
    pub dir: PathBuf,
}

impl CniPath {
    pub fn new(dir: &Path, agent_bin: &Path) -> anyhow::Result<Self> {
        std::fs::create_dir_all(dir)?;
        for plugin in ["ptp", "host-local"] {
            let src = Path::new(PLUGIN_DIR).join(plugin);
            if !src.exists() {
                bail!(
                    "{} missing: apt-get install containernetworking-plugins (cargo xtask setup does)",
                    src.display()
                );
            }
            link(&src, &dir.join(plugin))?;
        }
        link(agent_bin, &dir.join(palisade_agent::cni::PLUGIN_NAME))?;
        Ok(Self {
            dir: dir.to_path_buf(),
        })
    }
}

fn link(src: &Path, dst: &Path) -> anyhow::Result<()> {
    let _ = std::fs::remove_file(dst);
    std::os::unix::fs::symlink(src, dst)
        .with_context(|| format!("symlinking {} to {}", dst.display(), src.display()))
}

/// One pod's network attachment, as a runtime would ask for it.
pub struct Invocation<'a> {
    pub path: &'a CniPath,
    /// The "host" namespace the plugins run in.
    pub node_netns: &'a str,
    /// The pod's namespace, by absolute path (CNI_NETNS).
    pub pod_netns: PathBuf,
    pub container_id: String,
    pub ifname: String,
}

impl Invocation<'_> {
    /// One plugin, one command: its stdout (a result, or nothing), or an
    /// error carrying the plugin's error object.
    pub fn call(&self, command: &str, conf: &Value) -> anyhow::Result<Option<Value>> {
        let kind = conf["type"].as_str().context("plugin entry without type")?;
        // nsenter, not `ip netns exec`: that one remounts /sys for the
        // namespace, which hides bpffs and with it the agent's pins (a
        // runtime runs its plugins with the host's mounts).
        let mut child = Command::new("nsenter")
            .arg(format!("--net=/run/netns/{}", self.node_netns))
            .arg(self.path.dir.join(kind))
            .env("CNI_COMMAND", command)
            .env("CNI_CONTAINERID", &self.container_id)
            .env("CNI_NETNS", &self.pod_netns)
            .env("CNI_IFNAME", &self.ifname)
            .env("CNI_PATH", &self.path.dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("running {kind}"))?;
        child
            .stdin
            .take()
            .context("stdin")?
            .write_all(conf.to_string().as_bytes())?;
        let out = child.wait_with_output()?;
        let stdout = String::from_utf8_lossy(&out.stdout);
        if !out.status.success() {
            bail!(
                "{kind} {command} failed ({}): {stdout} {}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            );
        }
        if stdout.trim().is_empty() {
            return Ok(None);
        }
        Ok(Some(serde_json::from_str(&stdout).with_context(|| {
            format!("{kind} {command} printed no JSON: {stdout}")
        })?))
    }

    /// ADD through a conflist's plugins in order; the last result.
    pub fn add(&self, network: &str, plugins: &[Value]) -> anyhow::Result<Value> {
        let mut prev: Option<Value> = None;
        for p in plugins {
            let conf = entry(network, p, prev.as_ref());
            prev = Some(
                self.call("ADD", &conf)?
                    .with_context(|| format!("{} ADD printed no result", p["type"]))?,
            );
        }
        prev.context("an empty chain")
    }

    /// DEL through the plugins in reverse order, each given the ADD result.
    pub fn del(&self, network: &str, plugins: &[Value], result: &Value) -> anyhow::Result<()> {
        for p in plugins.iter().rev() {
            self.call("DEL", &entry(network, p, Some(result)))?;
        }
        Ok(())
    }
}

/// A plugin's configuration as the runtime hands it over.
fn entry(network: &str, plugin: &Value, prev: Option<&Value>) -> Value {
    let mut conf = plugin.clone();
    conf["cniVersion"] = json!("1.0.0");
    conf["name"] = json!(network);
    if let Some(prev) = prev {
        conf["prevResult"] = prev.clone();
    }
    conf
}

/// ptp with host-local handing out exactly `ip` from `subnet` (gateway: the
/// subnet's first address), the way kindnet wires pods.
pub fn ptp(subnet: &str, ip: std::net::Ipv4Addr, data_dir: &Path) -> Value {
    json!({
        "type": "ptp",
        "ipMasq": false,
        "ipam": {
            "type": "host-local",
            "dataDir": data_dir,
            "ranges": [[{"subnet": subnet, "rangeStart": ip, "rangeEnd": ip}]],
            "routes": [{"dst": "0.0.0.0/0"}],
        },
    })
}

/// The host-side interface in a result (the one without a sandbox).
pub fn host_interface(result: &Value) -> Option<String> {
    result["interfaces"]
        .as_array()?
        .iter()
        .find(|i| i.get("sandbox").is_none_or(|s| s.as_str() == Some("")))
        .and_then(|i| i["name"].as_str())
        .map(str::to_string)
}
