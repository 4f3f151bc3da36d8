//! The loaded eBPF object, its pinned maps, and the attachments.

use std::{
    collections::{BTreeMap, BTreeSet},
    io,
    os::fd::AsFd,
    path::{Path, PathBuf},
};

use aya::{
    Ebpf, EbpfLoader,
    maps::{HashMap, LpmTrie, MapData, MapError, RingBuf},
    programs::{
        CgroupAttachMode, CgroupSkb, CgroupSkbAttachType, CgroupSockAddr, ProgramError,
        SchedClassifier, TcAttachType,
        links::{FdLink, LinkError, PinnedLink},
        tc::{SchedClassifierLink, TcAttachOptions},
    },
};
use palisade_common::{
    Addr, EndpointValue, IpcacheValue, MAP_CONNTRACK, MAP_COUNTERS, MAP_ENDPOINTS, MAP_EVENTS,
    MAP_IFACES, MAP_IPCACHE, MAP_POLICY, PROG_CGROUP_EGRESS, PROG_FLOOR, PROG_FROM_POD,
    PROG_SOCK_ADDR, PROG_TO_POD, PolicyKeyData, PolicyValue,
};
use tracing::{debug, info, warn};

use super::{
    PROGRAMS, bpffs,
    paths::{Hook, PinPaths},
    wire,
};
use crate::policy::state::{EndpointEntry, IpcacheEntry, MapOp, MapWriter, Maps};

#[derive(Debug, thiserror::Error)]
pub enum DatapathError {
    #[error("mounting bpffs at {path}")]
    Bpffs {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("creating pin directory {path}")]
    PinDir {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("loading the eBPF object")]
    Load(#[source] Box<aya::EbpfError>),
    #[error("program {name}")]
    Program {
        name: &'static str,
        #[source]
        source: ProgramError,
    },
    #[error("program {0} missing from the eBPF object")]
    MissingProgram(&'static str),
    #[error("map {0} missing from the eBPF object")]
    MissingMap(&'static str),
    #[error("map {name}")]
    Map {
        name: &'static str,
        #[source]
        source: MapError,
    },
    #[error("attaching {hook} to {ifname}")]
    Attach {
        ifname: String,
        hook: &'static str,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("pinning {path}")]
    Pin {
        path: PathBuf,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("no pinned program at {path}: the agent has not run on this node yet")]
    NotPinned { path: PathBuf },
    #[error("opening cgroup {path}")]
    Cgroup {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// What the tc programs do with traffic of an address on an attached veth
/// that is not a known endpoint (a pod the agent does not know yet).
#[derive(
    Clone,
    Copy,
    Debug,
    Default,
    PartialEq,
    Eq,
    serde::Serialize,
    serde::Deserialize,
    clap::ValueEnum,
)]
#[serde(rename_all = "lowercase")]
pub enum UnknownEndpoint {
    /// Drop: a new pod sends nothing before its policy is programmed.
    #[default]
    Deny,
    /// Pass (fail-open), e.g. when non-pod veths cannot be told apart by name.
    Allow,
}

/// Map capacities, when not the compiled-in defaults (`MAX_*` in common).
/// Pinned maps keep the size they were created with: a changed size needs
/// `palisade uninstall` (or a new layout version) to take effect.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MapSizes {
    pub policy: Option<u32>,
    pub ipcache: Option<u32>,
    pub conntrack: Option<u32>,
    /// How much of the shared tables one endpoint may take per second.
    pub budgets: Budgets,
}

/// Per-endpoint budgets enforced in the kernel, so one pod's flood can
/// neither evict other pods' flows from the shared conntrack table nor
/// crowd their deny events out of the ring buffer. A rate of 0 disables one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Budgets {
    pub new_flows_per_sec: u32,
    pub new_flow_burst: u32,
    pub deny_events_per_sec: u32,
    pub deny_event_burst: u32,
    /// Allowed new flows sent to user space for observation, audit and
    /// `Log` rules; past it they are counted (`observe_budget`), not sent.
    pub observed_flows_per_sec: u32,
    pub observed_flow_burst: u32,
}

impl Default for Budgets {
    fn default() -> Self {
        Self {
            new_flows_per_sec: 20_000,
            new_flow_burst: 40_000,
            deny_events_per_sec: 500,
            deny_event_burst: 2_000,
            observed_flows_per_sec: 200,
            observed_flow_burst: 1_000,
        }
    }
}

impl Budgets {
    /// (interval, tolerance) in nanoseconds for the kernel's GCRA.
    fn spacing(rate: u32, burst: u32) -> (u64, u64) {
        if rate == 0 {
            return (0, 0);
        }
        let interval = (1_000_000_000 / u64::from(rate)).max(1);
        (interval, interval * u64::from(burst.max(1)))
    }
}

/// The three policy maps, written by [`MapWriter::apply`].
pub struct KernelMaps {
    endpoints: HashMap<MapData, Addr, EndpointValue>,
    ifaces: HashMap<MapData, u32, u32>,
    ipcache: LpmTrie<MapData, Addr, IpcacheValue>,
    policy: LpmTrie<MapData, PolicyKeyData, PolicyValue>,
}

#[derive(Debug, thiserror::Error)]
#[error("{op:?}")]
pub struct ApplyError {
    /// The write that failed, for the log and a retry.
    pub op: MapOp,
    #[source]
    pub source: MapError,
}

impl MapWriter for KernelMaps {
    type Error = ApplyError;

    fn apply(&mut self, op: &MapOp) -> Result<(), ApplyError> {
        let r = match op {
            MapOp::UpsertPolicy(k, v) => {
                self.policy
                    .insert(&wire::policy_key(k), wire::policy_value(*v), 0)
            }
            MapOp::DeletePolicy(k) => self.policy.remove(&wire::policy_key(k)),
            MapOp::UpsertIpcache(k, v) => {
                self.ipcache
                    .insert(&wire::ipcache_key(k), wire::ipcache_value(v), 0)
            }
            MapOp::DeleteIpcache(k) => self.ipcache.remove(&wire::ipcache_key(k)),
            MapOp::UpsertEndpoint(k, v) => {
                self.endpoints
                    .insert(wire::addr(*k), wire::endpoint_value(v), 0)
            }
            MapOp::DeleteEndpoint(k) => self.endpoints.remove(&wire::addr(*k)),
            MapOp::UpsertIface(k, v) => self.ifaces.insert(k, v, 0),
            MapOp::DeleteIface(k) => self.ifaces.remove(k),
        };
        r.map_err(|source| ApplyError {
            op: op.clone(),
            source,
        })
    }
}

impl KernelMaps {
    /// What the kernel maps hold now, in logical form.
    pub fn read(&self) -> Maps {
        let mut maps = Maps::default();
        for (k, v) in self.endpoints.iter().flatten() {
            maps.endpoints.insert(
                wire::ip(&k),
                EndpointEntry {
                    id: v.id,
                    flags: v.flags,
                    ifindex: v.ifindex,
                },
            );
        }
        for (k, v) in self.ifaces.iter().flatten() {
            maps.ifaces.insert(k, v);
        }
        for (k, v) in self.ipcache.iter().flatten() {
            if let Some(net) = wire::ipcache_net(&k) {
                maps.ipcache.insert(
                    net,
                    IpcacheEntry {
                        identity: v.identity,
                        flags: v.flags,
                    },
                );
            }
        }
        for (k, v) in self.policy.iter().flatten() {
            if let Some(k) = wire::policy_key_back(&k) {
                maps.policy.insert(k, v.rule);
            }
        }
        maps
    }
}

/// Loaded programs, pinned maps, and what is attached where.
pub struct Datapath {
    ebpf: Ebpf,
    pins: PinPaths,
    maps: Option<KernelMaps>,
    /// ifindex -> ifname of interfaces carrying our tc programs.
    attached: BTreeMap<u32, String>,
}

/// Pins a new link so that it, and the program in it, outlive this process.
/// The two tc hooks of a pod's host-side veth and the program on each.
pub(super) const TC_HOOKS: [(Hook, &str, TcAttachType); 2] = [
    (Hook::FromPod, PROG_FROM_POD, TcAttachType::Ingress),
    (Hook::ToPod, PROG_TO_POD, TcAttachType::Egress),
];

/// Attaches `prog` to `ifname` at `tc` with a new TCX link and pins the
/// link at `path`, so that it outlives this process.
pub(super) fn attach_new(
    prog: &mut SchedClassifier,
    ifname: &str,
    hook: Hook,
    tc: TcAttachType,
    path: &Path,
) -> Result<(), DatapathError> {
    let attach_err = |e: Box<dyn std::error::Error + Send + Sync>| DatapathError::Attach {
        ifname: ifname.to_string(),
        hook: hook.name(),
        source: e,
    };
    let id = prog
        .attach_with_options(ifname, tc, TcAttachOptions::TcxOrder(Default::default()))
        .map_err(|e| attach_err(Box::new(e)))?;
    let link = prog.take_link(id).map_err(|e| attach_err(Box::new(e)))?;
    pin_link(link, path)
}

pub(super) fn pin_link<L: TryInto<FdLink, Error = LinkError>>(
    link: L,
    path: &Path,
) -> Result<(), DatapathError> {
    let pin_err = |e: Box<dyn std::error::Error + Send + Sync>| DatapathError::Pin {
        path: path.to_path_buf(),
        source: e,
    };
    let fd: FdLink = link.try_into().map_err(|e| pin_err(Box::new(e)))?;
    fd.pin(path).map_err(|e| pin_err(Box::new(e)))?;
    Ok(())
}

/// One program of the object, as its type.
fn program<'a, T>(ebpf: &'a mut Ebpf, name: &'static str) -> Result<&'a mut T, DatapathError>
where
    &'a mut T: TryFrom<&'a mut aya::programs::Program, Error = ProgramError>,
{
    ebpf.program_mut(name)
        .ok_or(DatapathError::MissingProgram(name))?
        .try_into()
        .map_err(|source| DatapathError::Program { name, source })
}

/// Pins a loaded program for the CNI plugin, replacing the pin of an earlier
/// run with no moment where none exists: pin under a temporary name, then
/// rename over the old one (bpffs renames like any filesystem).
fn pin_program(prog: &mut SchedClassifier, path: &Path) -> Result<(), DatapathError> {
    let pin_err = |e: Box<dyn std::error::Error + Send + Sync>| DatapathError::Pin {
        path: path.to_path_buf(),
        source: e,
    };
    let mut tmp = path.as_os_str().to_owned();
    tmp.push("-new");
    let tmp = PathBuf::from(tmp);
    // Left over by a run that died between the two steps.
    let _ = std::fs::remove_file(&tmp);
    prog.pin(&tmp).map_err(|e| pin_err(Box::new(e)))?;
    std::fs::rename(&tmp, path).map_err(|e| pin_err(Box::new(e)))
}

fn ensure_dir(path: &Path) -> Result<(), DatapathError> {
    std::fs::create_dir_all(path).map_err(|source| DatapathError::PinDir {
        path: path.to_path_buf(),
        source,
    })
}

/// The capacities the kernel holds for the pinned endpoint, ipcache,
/// policy and conntrack maps (what `--*-map-size` made them, or an earlier
/// run that created them), by metric label; a map that cannot be read is
/// left out.
pub fn capacities(pins: &PinPaths) -> Vec<(&'static str, u32)> {
    [
        ("endpoints", MAP_ENDPOINTS),
        ("ipcache", MAP_IPCACHE),
        ("policy", MAP_POLICY),
        ("conntrack", MAP_CONNTRACK),
    ]
    .into_iter()
    .filter_map(|(label, name)| {
        let map = aya::maps::MapData::from_pin(pins.maps().join(name)).ok()?;
        Some((label, map.info().ok()?.max_entries()))
    })
    .collect()
}

/// bpffs mounted, the pin directories there.
fn prepare_pins(pins: &PinPaths) -> Result<(), DatapathError> {
    let mount = bpffs::mount_point_for(pins.root()).to_path_buf();
    if bpffs::ensure_mounted(&mount).map_err(|source| DatapathError::Bpffs {
        path: mount.clone(),
        source,
    })? {
        info!(path = %mount.display(), "mounted bpffs");
    }
    for dir in [pins.maps(), pins.links(), pins.cgroups(), pins.programs()] {
        ensure_dir(&dir)?;
    }
    Ok(())
}

/// Loads the programs into the kernel, pinning the interface ones.
fn load_programs(ebpf: &mut Ebpf, pins: &PinPaths) -> Result<(), DatapathError> {
    for name in [PROG_FROM_POD, PROG_TO_POD] {
        let prog: &mut SchedClassifier = program(ebpf, name)?;
        prog.load()
            .map_err(|source| DatapathError::Program { name, source })?;
        pin_program(prog, &pins.program(name))?;
    }
    for name in PROG_SOCK_ADDR {
        let prog: &mut CgroupSockAddr = program(ebpf, name)?;
        prog.load()
            .map_err(|source| DatapathError::Program { name, source })?;
    }
    let prog: &mut CgroupSkb = program(ebpf, PROG_CGROUP_EGRESS)?;
    prog.load().map_err(|source| DatapathError::Program {
        name: PROG_CGROUP_EGRESS,
        source,
    })?;
    Ok(())
}

fn take_map<T>(
    ebpf: &mut Ebpf,
    name: &'static str,
    convert: impl FnOnce(aya::maps::Map) -> Result<T, MapError>,
) -> Result<T, DatapathError> {
    let map = ebpf.take_map(name).ok_or(DatapathError::MissingMap(name))?;
    convert(map).map_err(|source| DatapathError::Map { name, source })
}

impl Datapath {
    /// Loads the programs, reusing the pinned maps of a previous run (so
    /// enforcement state survives agent restarts) or creating and pinning them.
    pub fn open(pins: PinPaths, unknown_endpoint: UnknownEndpoint) -> Result<Self, DatapathError> {
        Self::open_sized(pins, unknown_endpoint, MapSizes::default())
    }

    /// [`Datapath::open`] with map capacities of the operator's choosing.
    pub fn open_sized(
        pins: PinPaths,
        unknown_endpoint: UnknownEndpoint,
        sizes: MapSizes,
    ) -> Result<Self, DatapathError> {
        prepare_pins(&pins)?;
        let drop_unknown: u8 = u8::from(unknown_endpoint == UnknownEndpoint::Deny);
        let mut loader = EbpfLoader::new();
        for (name, size) in [
            (MAP_POLICY, sizes.policy),
            (MAP_IPCACHE, sizes.ipcache),
            (MAP_CONNTRACK, sizes.conntrack),
        ] {
            if let Some(n) = size {
                loader.map_max_entries(name, n);
            }
        }
        let (flow_interval, flow_tolerance) = Budgets::spacing(
            sizes.budgets.new_flows_per_sec,
            sizes.budgets.new_flow_burst,
        );
        let (event_interval, event_tolerance) = Budgets::spacing(
            sizes.budgets.deny_events_per_sec,
            sizes.budgets.deny_event_burst,
        );
        let (observe_interval, observe_tolerance) = Budgets::spacing(
            sizes.budgets.observed_flows_per_sec,
            sizes.budgets.observed_flow_burst,
        );
        let mut ebpf = loader
            .default_map_pin_directory(pins.maps())
            .override_global(
                palisade_common::GLOBAL_UNKNOWN_ENDPOINT_DROP,
                &drop_unknown,
                true,
            )
            .override_global(
                palisade_common::GLOBAL_FLOW_INTERVAL_NS,
                &flow_interval,
                true,
            )
            .override_global(
                palisade_common::GLOBAL_FLOW_TOLERANCE_NS,
                &flow_tolerance,
                true,
            )
            .override_global(
                palisade_common::GLOBAL_EVENT_INTERVAL_NS,
                &event_interval,
                true,
            )
            .override_global(
                palisade_common::GLOBAL_EVENT_TOLERANCE_NS,
                &event_tolerance,
                true,
            )
            .override_global(
                palisade_common::GLOBAL_OBSERVE_INTERVAL_NS,
                &observe_interval,
                true,
            )
            .override_global(
                palisade_common::GLOBAL_OBSERVE_TOLERANCE_NS,
                &observe_tolerance,
                true,
            )
            .load(PROGRAMS)
            .map_err(|e| DatapathError::Load(Box::new(e)))?;
        load_programs(&mut ebpf, &pins)?;
        let maps = KernelMaps {
            endpoints: take_map(&mut ebpf, MAP_ENDPOINTS, HashMap::try_from)?,
            ifaces: take_map(&mut ebpf, MAP_IFACES, HashMap::try_from)?,
            ipcache: take_map(&mut ebpf, MAP_IPCACHE, LpmTrie::try_from)?,
            policy: take_map(&mut ebpf, MAP_POLICY, LpmTrie::try_from)?,
        };
        for stale in pins.stale_versions() {
            info!(path = %stale.display(), "pins of another layout version found; removed once this version is attached");
        }
        Ok(Self {
            ebpf,
            pins,
            maps: Some(maps),
            attached: BTreeMap::new(),
        })
    }

    /// The policy maps, for the syncer (taken once).
    pub fn kernel_maps(&mut self) -> Result<KernelMaps, DatapathError> {
        self.maps
            .take()
            .ok_or(DatapathError::MissingMap(MAP_POLICY))
    }

    /// The policy maps' current content (empty once they were taken).
    pub fn read_maps(&self) -> Maps {
        self.maps.as_ref().map(KernelMaps::read).unwrap_or_default()
    }

    pub fn pins(&self) -> &PinPaths {
        &self.pins
    }

    pub fn attached(&self) -> &BTreeMap<u32, String> {
        &self.attached
    }

    /// The ring buffer of deny events (taken once).
    pub fn take_events(&mut self) -> Result<RingBuf<MapData>, DatapathError> {
        take_map(&mut self.ebpf, MAP_EVENTS, RingBuf::try_from)
    }

    pub fn take_counters(&mut self) -> Result<aya::maps::PerCpuArray<MapData, u64>, DatapathError> {
        take_map(
            &mut self.ebpf,
            MAP_COUNTERS,
            aya::maps::PerCpuArray::try_from,
        )
    }

    pub fn take_conntrack(
        &mut self,
    ) -> Result<HashMap<MapData, palisade_common::CtKey, palisade_common::CtValue>, DatapathError>
    {
        take_map(&mut self.ebpf, MAP_CONNTRACK, HashMap::try_from)
    }

    /// A loaded tc program, e.g. for `BPF_PROG_TEST_RUN` self-tests.
    pub fn classifier(&mut self, hook: Hook) -> Result<&mut SchedClassifier, DatapathError> {
        let name = match hook {
            Hook::FromPod => PROG_FROM_POD,
            Hook::ToPod => PROG_TO_POD,
        };
        program(&mut self.ebpf, name)
    }

    /// The bench's reference program (`palisade_floor`), loaded on first
    /// use: the agent itself never loads or attaches it.
    pub fn floor_classifier(&mut self) -> Result<&mut SchedClassifier, DatapathError> {
        let prog: &mut SchedClassifier = program(&mut self.ebpf, PROG_FLOOR)?;
        if prog.fd().is_err() {
            prog.load().map_err(|source| DatapathError::Program {
                name: PROG_FLOOR,
                source,
            })?;
        }
        Ok(prog)
    }

    /// Attaches both tc programs to an interface. An interface that already
    /// carries our pinned links gets the new programs swapped in atomically
    /// (no packet is ever unjudged); otherwise new TCX links are made and pinned.
    pub fn attach(&mut self, ifname: &str, ifindex: u32) -> Result<(), DatapathError> {
        for (hook, prog_name, tc) in TC_HOOKS {
            let path = self.pins.link(ifname, ifindex, hook);
            let prog: &mut SchedClassifier = program(&mut self.ebpf, prog_name)?;
            let attach_err = |e: Box<dyn std::error::Error + Send + Sync>| DatapathError::Attach {
                ifname: ifname.to_string(),
                hook: hook.name(),
                source: e,
            };
            if path.exists() {
                let pinned = PinnedLink::from_pin(&path).map_err(|e| DatapathError::Pin {
                    path: path.clone(),
                    source: Box::new(e),
                })?;
                let link = SchedClassifierLink::try_from(FdLink::from(pinned))
                    .map_err(|e| attach_err(Box::new(e)))?;
                let id = prog
                    .attach_to_link(link)
                    .map_err(|e| attach_err(Box::new(e)))?;
                // The pin keeps the link; our handle can go.
                let _ = prog.take_link(id).map_err(|e| attach_err(Box::new(e)))?;
                debug!(
                    ifname,
                    hook = hook.name(),
                    "replaced program in pinned link"
                );
            } else {
                attach_new(prog, ifname, hook, tc, &path)?;
                debug!(ifname, hook = hook.name(), "attached and pinned");
            }
        }
        self.attached.insert(ifindex, ifname.to_string());
        Ok(())
    }

    /// Removes the pins of interfaces that no longer exist (the kernel
    /// dropped their links with the device) and forgets them.
    pub fn forget_missing(&mut self, present: &BTreeSet<u32>) {
        self.attached.retain(|ifindex, _| present.contains(ifindex));
        for entry in std::fs::read_dir(self.pins.links())
            .into_iter()
            .flatten()
            .flatten()
        {
            let name = entry.file_name().to_string_lossy().into_owned();
            let ifindex = PinPaths::link_ifindex(&name);
            if ifindex.is_some_and(|i| !present.contains(&i)) {
                let _ = std::fs::remove_file(entry.path());
            }
        }
    }

    /// Detaches our programs from an interface and removes its pins.
    pub fn detach(&mut self, ifname: &str, ifindex: u32) {
        for hook in [Hook::FromPod, Hook::ToPod] {
            let path = self.pins.link(ifname, ifindex, hook);
            if let Ok(pinned) = PinnedLink::from_pin(&path) {
                // Unpinning drops the last reference: the kernel detaches.
                let _ = pinned.unpin();
            }
        }
        self.attached.remove(&ifindex);
    }

    /// Attaches the metadata block (connect/sendmsg hooks and the cgroup_skb
    /// egress program, which also sees raw sockets' packets) to a cgroup;
    /// returns the cgroup's inode, which names its pins.
    pub fn attach_cgroup(&mut self, cgroup: &Path) -> Result<u64, DatapathError> {
        let file = std::fs::File::open(cgroup).map_err(|source| DatapathError::Cgroup {
            path: cgroup.to_path_buf(),
            source,
        })?;
        let ino = std::os::unix::fs::MetadataExt::ino(&file.metadata().map_err(|source| {
            DatapathError::Cgroup {
                path: cgroup.to_path_buf(),
                source,
            }
        })?);
        let attach_err = |hook: &'static str, e: ProgramError| DatapathError::Attach {
            ifname: cgroup.display().to_string(),
            hook,
            source: Box::new(e),
        };
        for name in PROG_SOCK_ADDR.into_iter().chain([PROG_CGROUP_EGRESS]) {
            let path = self.pins.cgroup_link(ino, name);
            if path.exists() {
                continue;
            }
            // A cgroup bpf_link takes no attach flags: links always share the hook.
            if name == PROG_CGROUP_EGRESS {
                let prog: &mut CgroupSkb = program(&mut self.ebpf, name)?;
                let id = prog
                    .attach(
                        file.as_fd(),
                        CgroupSkbAttachType::Egress,
                        CgroupAttachMode::Single,
                    )
                    .map_err(|e| attach_err(name, e))?;
                let link = prog.take_link(id).map_err(|e| attach_err(name, e))?;
                pin_link(link, &path)?;
            } else {
                let prog: &mut CgroupSockAddr = program(&mut self.ebpf, name)?;
                let id = prog
                    .attach(file.as_fd(), CgroupAttachMode::Single)
                    .map_err(|e| attach_err(name, e))?;
                let link = prog.take_link(id).map_err(|e| attach_err(name, e))?;
                pin_link(link, &path)?;
            }
        }
        Ok(ino)
    }

    /// Removes the metadata block from a cgroup.
    pub fn detach_cgroup(&mut self, cgroup_ino: u64) {
        for name in PROG_SOCK_ADDR.into_iter().chain([PROG_CGROUP_EGRESS]) {
            if let Ok(pinned) = PinnedLink::from_pin(self.pins.cgroup_link(cgroup_ino, name)) {
                let _ = pinned.unpin();
            }
        }
    }

    /// Removes the pin trees of other layout versions: their programs detach
    /// and their maps go. Called once this version's programs are attached
    /// everywhere, so no interface is left without enforcement.
    pub fn remove_stale_versions(&self) {
        for stale in self.pins.stale_versions() {
            match std::fs::remove_dir_all(&stale) {
                Ok(()) => {
                    info!(path = %stale.display(), "removed the pins of an older layout version")
                }
                Err(e) => warn!(path = %stale.display(), error = %e, "removing old pins"),
            }
        }
    }

    /// Removes every pin: programs detach, maps go when unreferenced.
    pub fn uninstall(pins: &PinPaths) -> io::Result<()> {
        match std::fs::remove_dir_all(pins.root()) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            r => r,
        }
    }
}
