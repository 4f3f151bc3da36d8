//! The host side of a pod's veth: enter the pod's network namespace on a
//! thread of its own (setns moves only the calling thread), read the
//! container interface's IFLA_LINK (its peer's ifindex in the other
//! namespace), then check that this namespace has a veth at that index
//! whose own peer is the container interface.

use std::{fs::File, io, os::fd::AsRawFd, path::Path};

use futures_util::TryStreamExt;
use netlink_packet_route::link::{InfoKind, LinkAttribute, LinkInfo, LinkMessage};

#[derive(Debug, thiserror::Error)]
pub enum PeerError {
    #[error("opening {path}")]
    OpenNetns {
        path: std::path::PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("setns")]
    Setns(#[source] io::Error),
    #[error("opening rtnetlink")]
    Socket(#[source] io::Error),
    #[error("RTM_GETLINK {what}")]
    GetLink {
        what: String,
        #[source]
        source: Box<rtnetlink::Error>,
    },
    #[error("{ifname} is not one end of a veth pair (no IFLA_LINK)")]
    NoPeer { ifname: String },
    #[error("no veth at ifindex {ifindex} here whose peer is the container's {ifname}")]
    NotHere { ifindex: u32, ifname: String },
    #[error("the lookup thread panicked")]
    Thread,
}

/// The host-side veth of a pod interface.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostVeth {
    pub name: String,
    pub index: u32,
}

#[derive(Debug)]
struct Link {
    index: u32,
    name: Option<String>,
    peer: Option<u32>,
    is_veth: bool,
}

impl From<LinkMessage> for Link {
    fn from(msg: LinkMessage) -> Self {
        let mut l = Link {
            index: msg.header.index,
            name: None,
            peer: None,
            is_veth: false,
        };
        for attr in msg.attributes {
            match attr {
                LinkAttribute::IfName(n) => l.name = Some(n),
                LinkAttribute::Link(i) => l.peer = Some(i),
                LinkAttribute::LinkInfo(infos) => {
                    l.is_veth = infos
                        .iter()
                        .any(|i| matches!(i, LinkInfo::Kind(InfoKind::Veth)));
                }
                _ => {}
            }
        }
        l
    }
}

enum Select {
    Name(String),
    Index(u32),
}

/// One RTM_GETLINK in the calling thread's namespace.
fn get_link(select: Select) -> Result<Option<Link>, PeerError> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()
        .map_err(PeerError::Socket)?;
    rt.block_on(async move {
        let (conn, handle, _) = rtnetlink::new_connection().map_err(PeerError::Socket)?;
        tokio::spawn(conn);
        let (req, what) = match select {
            Select::Name(n) => (handle.link().get().match_name(n.clone()), n),
            Select::Index(i) => (handle.link().get().match_index(i), format!("ifindex {i}")),
        };
        match req.execute().try_next().await {
            Ok(m) => Ok(m.map(Link::from)),
            // ENODEV: no such link.
            Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -libc::ENODEV => Ok(None),
            Err(e) => Err(PeerError::GetLink {
                what,
                source: Box::new(e),
            }),
        }
    })
}

/// The container interface `ifname` of the namespace at `netns`: its index
/// and its peer's index.
fn container_side(netns: &Path, ifname: &str) -> Result<(u32, u32), PeerError> {
    let f = File::open(netns).map_err(|source| PeerError::OpenNetns {
        path: netns.to_path_buf(),
        source,
    })?;
    let ifname = ifname.to_string();
    std::thread::spawn(move || {
        // SAFETY: a valid fd of a network namespace file; only this thread moves.
        if unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            return Err(PeerError::Setns(io::Error::last_os_error()));
        }
        let link = get_link(Select::Name(ifname.clone()))?;
        match link {
            Some(Link {
                index,
                peer: Some(peer),
                ..
            }) if peer != index => Ok((index, peer)),
            _ => Err(PeerError::NoPeer { ifname }),
        }
    })
    .join()
    .map_err(|_| PeerError::Thread)?
}

/// The host-side veth (in the caller's namespace) of `ifname` in `netns`.
pub fn host_peer(netns: &Path, ifname: &str) -> Result<HostVeth, PeerError> {
    let (inner, outer) = container_side(netns, ifname)?;
    let not_here = || PeerError::NotHere {
        ifindex: outer,
        ifname: ifname.to_string(),
    };
    let host = get_link(Select::Index(outer))?.ok_or_else(not_here)?;
    match host {
        Link {
            index,
            name: Some(name),
            peer: Some(peer),
            is_veth: true,
        } if peer == inner => Ok(HostVeth { name, index }),
        _ => Err(not_here()),
    }
}
