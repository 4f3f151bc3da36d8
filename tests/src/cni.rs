//! Wiring pods the way a kubelet's container runtime does: a CNI network
//! configuration list run through the CNI protocol (spec 1.0: each plugin
//! binary gets its config on stdin and the call in `CNI_*` variables; in a
//! chain each plugin after the first gets `prevResult`; DEL runs the chain
//! in reverse with the ADD result).
//!
//! The list is kindnet's: `ptp` with `host-local` IPAM. Further plugins (a
//! chained `palisade-cni`) are appended by name.

use std::{
    io::Write as _,
    net::IpAddr,
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use anyhow::{Context as _, bail};
use serde_json::{Value, json};

use crate::{netns::netns_path, scenario::Family};

/// Where Debian's containernetworking-plugins puts the binaries.
pub const CNI_PATH: &str = "/usr/lib/cni";
const CNI_VERSION: &str = "1.0.0";
/// The pod-side interface, as the kubelet names it.
pub const POD_IFNAME: &str = "eth0";

/// A network configuration list (`.conflist`).
#[derive(Clone, Debug)]
pub struct Conflist {
    pub name: String,
    pub plugins: Vec<Value>,
}

impl Conflist {
    /// kindnet's list: ptp veths, addresses from host-local leases kept in
    /// `data_dir` (one per node, so nodes never share leases), default
    /// routes for both families; then `extra` plugins by type name.
    pub fn kindnet(data_dir: &Path, family: Family, extra: &[String]) -> Self {
        // Ranges and routes of the cluster's families only: host-local
        // leases an address from every range.
        let mut ranges = Vec::new();
        let mut routes = Vec::new();
        if family.v4() {
            ranges.push(json!([{"subnet": "10.244.0.0/16"}]));
            routes.push(json!({"dst": "0.0.0.0/0"}));
        }
        if family.v6() {
            ranges.push(json!([{"subnet": "fd00:10:244::/56"}]));
            routes.push(json!({"dst": "::/0"}));
        }
        let mut plugins = vec![json!({
            "type": "ptp",
            // The runtime passes the wanted addresses as runtimeConfig.ips
            // (host-local 1.1.1 takes one address only in CNI_ARGS IP=).
            "capabilities": {"ips": true},
            "ipMasq": false,
            "ipam": {
                "type": "host-local",
                "dataDir": data_dir,
                "ranges": ranges,
                "routes": routes,
            },
        })];
        plugins.extend(extra.iter().map(|t| json!({"type": t})));
        Self {
            name: "kindnet".into(),
            plugins,
        }
    }
}

/// One attachment of a pod to a network, kept for its DEL.
#[derive(Clone, Debug)]
pub struct Attachment {
    /// The node namespace the plugins ran in (the host side).
    pub node_netns: String,
    pub container_id: String,
    pub pod_netns: String,
    /// The final result of the ADD chain.
    pub result: Value,
}

impl Attachment {
    /// The host-side interface (the one without a sandbox), e.g. `veth1a2b3c4d`.
    pub fn host_ifname(&self) -> Option<String> {
        self.result["interfaces"]
            .as_array()?
            .iter()
            .find(|i| i.get("sandbox").is_none())
            .and_then(|i| i["name"].as_str())
            .map(str::to_string)
    }
}

/// Runs ADD through the chain inside `node_netns`, asking for `ips`.
pub fn add(
    list: &Conflist,
    node_netns: &str,
    container_id: &str,
    pod_netns: &str,
    ips: &[IpAddr],
) -> anyhow::Result<Attachment> {
    let runtime = json!({"ips": ips.iter().map(ToString::to_string).collect::<Vec<_>>()});
    let mut prev: Option<Value> = None;
    for plugin in &list.plugins {
        let conf = plugin_config(list, plugin, prev.as_ref(), &runtime);
        let out = exec(node_netns, "ADD", container_id, pod_netns, &conf)?;
        prev = Some(out);
    }
    Ok(Attachment {
        node_netns: node_netns.into(),
        container_id: container_id.into(),
        pod_netns: pod_netns.into(),
        result: prev.context("an empty network configuration list")?,
    })
}

/// Runs DEL through the chain in reverse; every plugin is called even when
/// one fails (as runtimes do), and the first failure is returned.
pub fn del(list: &Conflist, a: &Attachment) -> anyhow::Result<()> {
    let runtime = json!({});
    let mut first_err = None;
    for plugin in list.plugins.iter().rev() {
        let conf = plugin_config(list, plugin, Some(&a.result), &runtime);
        if let Err(e) = exec(&a.node_netns, "DEL", &a.container_id, &a.pod_netns, &conf) {
            first_err.get_or_insert(e);
        }
    }
    first_err.map_or(Ok(()), Err)
}

/// A plugin's stdin: its own object with the list's name and version, the
/// previous result, and runtimeConfig for the capabilities it declares.
fn plugin_config(list: &Conflist, plugin: &Value, prev: Option<&Value>, runtime: &Value) -> Value {
    let mut conf = plugin.clone();
    conf["cniVersion"] = json!(CNI_VERSION);
    conf["name"] = json!(list.name);
    if let Some(p) = prev {
        conf["prevResult"] = p.clone();
    }
    let mut rc = serde_json::Map::new();
    if let (Some(caps), Some(rt)) = (
        plugin.get("capabilities").and_then(Value::as_object),
        runtime.as_object(),
    ) {
        for (k, on) in caps {
            if on.as_bool() == Some(true)
                && let Some(v) = rt.get(k)
            {
                rc.insert(k.clone(), v.clone());
            }
        }
    }
    if !rc.is_empty() {
        conf["runtimeConfig"] = Value::Object(rc);
    }
    conf
}

fn plugin_path(conf: &Value) -> anyhow::Result<PathBuf> {
    let ty = conf["type"].as_str().context("a plugin without type")?;
    let path = Path::new(CNI_PATH).join(ty);
    if !path.exists() {
        bail!(
            "CNI plugin {} missing (Debian containernetworking-plugins: cargo xtask setup)",
            path.display()
        );
    }
    Ok(path)
}

fn exec(
    node_netns: &str,
    command: &str,
    container_id: &str,
    pod_netns: &str,
    conf: &Value,
) -> anyhow::Result<Value> {
    let bin = plugin_path(conf)?;
    let ty = conf["type"].as_str().unwrap_or_default().to_string();
    let mut child = Command::new("ip")
        .args(["netns", "exec", node_netns])
        .arg(&bin)
        .env("CNI_COMMAND", command)
        .env("CNI_CONTAINERID", container_id)
        .env("CNI_NETNS", netns_path(pod_netns))
        .env("CNI_IFNAME", POD_IFNAME)
        .env("CNI_PATH", CNI_PATH)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("running CNI plugin {ty}"))?;
    child
        .stdin
        .take()
        .context("plugin stdin")?
        .write_all(conf.to_string().as_bytes())?;
    let out = child.wait_with_output()?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        // Errors come as a JSON object on stdout (code, msg, details).
        bail!(
            "CNI {command} of {container_id} by {ty} failed ({}): {} {}",
            out.status,
            stdout.trim(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    if command == "DEL" || stdout.trim().is_empty() {
        return Ok(Value::Null);
    }
    serde_json::from_str(&stdout).with_context(|| format!("CNI {command} result of {ty}: {stdout}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chained_plugins_get_the_previous_result_and_only_their_capabilities() {
        let list = Conflist::kindnet(
            Path::new("/tmp/leases"),
            Family::Dual,
            &["palisade-cni".into()],
        );
        let rt = json!({"ips": ["10.244.1.10"]});
        let first = plugin_config(&list, &list.plugins[0], None, &rt);
        assert_eq!(first["type"], "ptp");
        assert_eq!(first["name"], "kindnet");
        assert_eq!(first["cniVersion"], CNI_VERSION);
        assert_eq!(first["runtimeConfig"]["ips"][0], "10.244.1.10");
        assert!(first.get("prevResult").is_none());
        let prev = json!({"cniVersion": CNI_VERSION, "ips": []});
        let second = plugin_config(&list, &list.plugins[1], Some(&prev), &rt);
        assert_eq!(second["type"], "palisade-cni");
        assert_eq!(second["prevResult"], prev);
        assert!(second.get("runtimeConfig").is_none());
    }

    #[test]
    fn the_host_side_is_the_interface_without_sandbox() {
        let a = Attachment {
            node_netns: "n".into(),
            container_id: "c".into(),
            pod_netns: "p".into(),
            result: json!({"interfaces": [{"name": "veth1234abcd"}, {"name": "eth0", "sandbox": "/run/netns/p"}]}),
        };
        assert_eq!(a.host_ifname().as_deref(), Some("veth1234abcd"));
    }
}
