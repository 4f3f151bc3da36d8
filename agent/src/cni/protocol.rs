//! The CNI protocol as a chained plugin sees it (spec 1.0, chaining): the
//! command and container from the environment, the network configuration
//! with `prevResult` on stdin, the previous result (unchanged) or an error
//! object on stdout. Pure but for what the [`Node`] does.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::dataplane::{PinPaths, paths::DEFAULT_ROOT};

/// Versions whose result this plugin can pass along (it never builds one).
pub const SUPPORTED_VERSIONS: &[&str] = &["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"];

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Command {
    Add,
    Del,
    Check,
    Version,
    /// CNI 1.1: is the plugin ready for ADDs?
    Status,
    /// CNI 1.1: garbage collection; the agent removes stale pins itself.
    Gc,
}

impl Command {
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "ADD" => Self::Add,
            "DEL" => Self::Del,
            "CHECK" => Self::Check,
            "VERSION" => Self::Version,
            "STATUS" => Self::Status,
            "GC" => Self::Gc,
            _ => return None,
        })
    }
}

/// The plugin's entry in the node's conflist (plus what the runtime adds).
#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NetConf {
    pub cni_version: String,
    #[serde(default)]
    pub name: String,
    /// The agent's `--pin-root`.
    #[serde(default = "default_pin_root")]
    pub pin_root: PathBuf,
    /// Pass ADD when the agent has never run on this node (no pinned
    /// programs): the pod then runs unjudged until the agent attaches.
    #[serde(default)]
    pub fail_open: bool,
    #[serde(default)]
    pub prev_result: Option<serde_json::Value>,
}

fn default_pin_root() -> PathBuf {
    PathBuf::from(DEFAULT_ROOT)
}

/// The CNI_* variables.
#[derive(Clone, Debug, Default)]
pub struct Env {
    pub command: Option<String>,
    pub netns: Option<PathBuf>,
    pub ifname: Option<String>,
    pub container_id: Option<String>,
}

impl Env {
    pub fn from_vars(var: impl Fn(&str) -> Option<String>) -> Self {
        Self {
            command: var("CNI_COMMAND"),
            netns: var("CNI_NETNS")
                .filter(|s| !s.is_empty())
                .map(PathBuf::from),
            ifname: var("CNI_IFNAME").filter(|s| !s.is_empty()),
            container_id: var("CNI_CONTAINERID"),
        }
    }
}

/// A failed command, as the runtime is told (`code` per the CNI spec).
#[derive(Debug, thiserror::Error)]
pub enum CniError {
    #[error("CNI_COMMAND {0:?} is not ADD, DEL, CHECK, VERSION, STATUS or GC")]
    UnknownCommand(Option<String>),
    #[error("{var} is not set")]
    MissingEnv { var: &'static str },
    #[error("reading the network configuration from stdin")]
    Stdin(#[source] std::io::Error),
    #[error("decoding the network configuration")]
    Decode(#[source] serde_json::Error),
    #[error("cniVersion {0} is not supported")]
    Version(String),
    #[error(
        "no prevResult: palisade-cni is a chained plugin, list it after the plugin that makes the pod's interface"
    )]
    NoPrevResult,
    #[error(
        "the Palisade agent's programs are not pinned under {}: the agent has not run on this node yet (set failOpen: true to let pods start unjudged)",
        pin_root.display()
    )]
    NotReady { pin_root: PathBuf },
    #[error("finding the host side of {ifname} in {}", netns.display())]
    HostPeer {
        ifname: String,
        netns: PathBuf,
        #[source]
        source: super::peer::PeerError,
    },
    #[error("attaching the Palisade programs to {ifname}")]
    Attach {
        ifname: String,
        #[source]
        source: Box<crate::dataplane::DatapathError>,
    },
}

impl CniError {
    /// The spec's well-known codes; 100 and up are this plugin's own.
    pub fn code(&self) -> u32 {
        match self {
            Self::Version(_) => 1,
            Self::UnknownCommand(_) | Self::MissingEnv { .. } => 4,
            Self::Stdin(_) => 5,
            Self::Decode(_) => 6,
            Self::NoPrevResult => 7,
            // Transient: the agent's DaemonSet pod is starting; the runtime retries.
            Self::NotReady { .. } => 11,
            Self::HostPeer { .. } => 100,
            Self::Attach { .. } => 101,
        }
    }

    /// The error object for stdout: `msg` this error, `details` its causes.
    pub fn to_json(&self, cni_version: &str) -> serde_json::Value {
        let mut details = Vec::new();
        let mut cur = std::error::Error::source(self);
        while let Some(c) = cur {
            details.push(c.to_string());
            cur = c.source();
        }
        serde_json::json!({
            "cniVersion": cni_version,
            "code": self.code(),
            "msg": self.to_string(),
            "details": details.join(": "),
        })
    }
}

/// What ADD does to the node (the kernel in the binary, a fake in tests).
pub trait Node {
    fn programs_pinned(&self, pins: &PinPaths) -> bool;
    /// Attaches the pinned programs to the host side of `ifname` in `netns`.
    fn attach(&mut self, pins: &PinPaths, netns: &Path, ifname: &str) -> Result<(), CniError>;
}

/// What to print on stdout on success (`None`: nothing), and warnings for stderr.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Output {
    pub stdout: Option<String>,
    pub warnings: Vec<String>,
}

/// The cniVersion to answer in, even when the configuration is unreadable.
pub fn answer_version(stdin: &str) -> String {
    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Version {
        cni_version: String,
    }
    serde_json::from_str::<Version>(stdin)
        .map(|v| v.cni_version)
        .unwrap_or_else(|_| "1.0.0".into())
}

/// Runs one plugin invocation.
pub fn run(env: &Env, stdin: &str, node: &mut impl Node) -> Result<Output, CniError> {
    let command = env
        .command
        .as_deref()
        .and_then(Command::parse)
        .ok_or_else(|| CniError::UnknownCommand(env.command.clone()))?;
    if command == Command::Version {
        let v = serde_json::json!({
            "cniVersion": answer_version(stdin),
            "supportedVersions": SUPPORTED_VERSIONS,
        });
        return Ok(Output {
            stdout: Some(v.to_string()),
            ..Output::default()
        });
    }
    let conf: NetConf = serde_json::from_str(stdin).map_err(CniError::Decode)?;
    if !SUPPORTED_VERSIONS.contains(&conf.cni_version.as_str()) {
        return Err(CniError::Version(conf.cni_version));
    }
    let pins = PinPaths::new(&conf.pin_root);
    match command {
        Command::Add => add(env, &conf, &pins, node),
        Command::Status if !conf.fail_open && !node.programs_pinned(&pins) => {
            Err(CniError::NotReady {
                pin_root: conf.pin_root.clone(),
            })
        }
        // The kernel drops the links with the veth; the agent removes their
        // pins (`Datapath::forget_missing`).
        Command::Del | Command::Check | Command::Status | Command::Gc => Ok(Output::default()),
        Command::Version => unreachable!("answered above"),
    }
}

fn add(
    env: &Env,
    conf: &NetConf,
    pins: &PinPaths,
    node: &mut impl Node,
) -> Result<Output, CniError> {
    let prev = conf.prev_result.as_ref().ok_or(CniError::NoPrevResult)?;
    let netns = env
        .netns
        .as_deref()
        .ok_or(CniError::MissingEnv { var: "CNI_NETNS" })?;
    let ifname = env
        .ifname
        .as_deref()
        .ok_or(CniError::MissingEnv { var: "CNI_IFNAME" })?;
    let stdout = Some(prev.to_string());
    if !node.programs_pinned(pins) {
        let e = CniError::NotReady {
            pin_root: conf.pin_root.clone(),
        };
        if !conf.fail_open {
            return Err(e);
        }
        return Ok(Output {
            stdout,
            warnings: vec![format!("failOpen: {}", crate::error_chain::chain(&e))],
        });
    }
    node.attach(pins, netns, ifname)?;
    Ok(Output {
        stdout,
        warnings: Vec::new(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Default)]
    struct Fake {
        pinned: bool,
        attached: Vec<(PathBuf, String)>,
    }

    impl Node for Fake {
        fn programs_pinned(&self, _: &PinPaths) -> bool {
            self.pinned
        }
        fn attach(&mut self, _: &PinPaths, netns: &Path, ifname: &str) -> Result<(), CniError> {
            self.attached
                .push((netns.to_path_buf(), ifname.to_string()));
            Ok(())
        }
    }

    fn env(cmd: &str) -> Env {
        Env {
            command: Some(cmd.into()),
            netns: Some("/run/netns/p".into()),
            ifname: Some("eth0".into()),
            container_id: Some("c1".into()),
        }
    }

    const PREV: &str = r#"{"cniVersion":"1.0.0","interfaces":[{"name":"veth1"},{"name":"eth0","sandbox":"/run/netns/p"}],"ips":[{"address":"10.0.0.2/24","interface":1}]}"#;

    fn conf(extra: &str) -> String {
        format!(
            r#"{{"cniVersion":"1.0.0","name":"k8s","type":"palisade-cni"{extra},"prevResult":{PREV}}}"#
        )
    }

    #[test]
    fn add_attaches_and_passes_prev_result_unchanged() {
        let mut node = Fake {
            pinned: true,
            ..Fake::default()
        };
        let out = run(&env("ADD"), &conf(""), &mut node).expect("add");
        let printed: serde_json::Value =
            serde_json::from_str(out.stdout.as_deref().expect("a result")).expect("json");
        let want: serde_json::Value = serde_json::from_str(PREV).expect("json");
        assert_eq!(printed, want);
        assert_eq!(
            node.attached,
            vec![(PathBuf::from("/run/netns/p"), "eth0".to_string())]
        );
    }

    #[test]
    fn add_without_pinned_programs_fails_closed_unless_fail_open() {
        let mut node = Fake::default();
        let e = run(&env("ADD"), &conf(""), &mut node).expect_err("fail closed");
        assert_eq!(e.code(), 11);
        let j = e.to_json("1.0.0");
        assert_eq!(j["code"], 11);
        assert!(
            j["msg"]
                .as_str()
                .is_some_and(|m| m.contains("/sys/fs/bpf/palisade"))
        );
        let out = run(&env("ADD"), &conf(r#","failOpen":true"#), &mut node).expect("fail open");
        assert!(out.stdout.is_some());
        assert_eq!(out.warnings.len(), 1);
        assert!(node.attached.is_empty());
    }

    #[test]
    fn pin_root_is_configurable() {
        let c: NetConf =
            serde_json::from_str(&conf(r#","pinRoot":"/sys/fs/bpf/other""#)).expect("conf");
        assert_eq!(c.pin_root, PathBuf::from("/sys/fs/bpf/other"));
        let c: NetConf = serde_json::from_str(&conf("")).expect("conf");
        assert_eq!(c.pin_root, PathBuf::from(DEFAULT_ROOT));
    }

    #[test]
    fn add_needs_a_prev_result_and_the_container_interface() {
        let mut node = Fake {
            pinned: true,
            ..Fake::default()
        };
        let bare = r#"{"cniVersion":"1.0.0","name":"k8s","type":"palisade-cni"}"#;
        assert_eq!(
            run(&env("ADD"), bare, &mut node)
                .expect_err("no prev")
                .code(),
            7
        );
        let mut e = env("ADD");
        e.ifname = None;
        assert_eq!(
            run(&e, &conf(""), &mut node).expect_err("no ifname").code(),
            4
        );
        assert!(node.attached.is_empty());
    }

    #[test]
    fn del_check_gc_succeed_without_output() {
        let mut node = Fake::default();
        for cmd in ["DEL", "CHECK", "GC"] {
            assert_eq!(
                run(&env(cmd), &conf(""), &mut node).expect(cmd),
                Output::default()
            );
        }
        // STATUS says whether an ADD would succeed.
        assert_eq!(
            run(&env("STATUS"), &conf(""), &mut node)
                .expect_err("not ready")
                .code(),
            11
        );
    }

    #[test]
    fn version_lists_supported_versions() {
        let out = run(
            &env("VERSION"),
            r#"{"cniVersion":"0.4.0"}"#,
            &mut Fake::default(),
        )
        .expect("version");
        let v: serde_json::Value =
            serde_json::from_str(out.stdout.as_deref().expect("output")).expect("json");
        assert_eq!(v["cniVersion"], "0.4.0");
        assert!(
            v["supportedVersions"]
                .as_array()
                .is_some_and(|a| a.iter().any(|x| x == "1.0.0"))
        );
    }

    #[test]
    fn errors_name_the_problem() {
        let mut node = Fake::default();
        assert_eq!(
            run(&env("BOGUS"), &conf(""), &mut node)
                .expect_err("bogus")
                .code(),
            4
        );
        assert_eq!(
            run(&env("ADD"), "{", &mut node).expect_err("json").code(),
            6
        );
        assert_eq!(
            run(
                &env("ADD"),
                r#"{"cniVersion":"9.9.9","prevResult":{}}"#,
                &mut node
            )
            .expect_err("version")
            .code(),
            1
        );
    }
}
