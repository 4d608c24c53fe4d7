//! Attaching the TC programs so that they outlive the agent, and swapping them in place.
//!
//! - tcx (Linux 6.6+): a tcx link lives as long as a file descriptor or a pin refers to
//!   it, so every link is pinned (`links/<ifindex>-<ifname>`, see [`super::pins`]). A new
//!   agent opens the pin and replaces the program inside the link with
//!   `BPF_LINK_UPDATE`: one atomic switch, never a moment without a program, and no
//!   second link (Cilium's "duplicate tcx links after restart").
//! - netlink (older kernels): a `clsact` filter stays until deleted. Ours always sits at
//!   [`TC_PRIORITY`] / [`TC_HANDLE`], so a new agent replaces it in place (a filter
//!   change on the same priority and handle is atomic for cls_bpf).
//!
//! aya detaches a link when its owner drops it; every link made here is taken out of
//! the program's link map and either pinned (tcx) or forgotten (netlink, which holds no
//! resource) so that nothing detaches when the agent exits.

use std::{io::ErrorKind, path::Path};

use aya::programs::{
    LinkOrder, SchedClassifier, TcAttachType,
    links::{FdLink, LinkError, PinnedLink},
    tc::{self, NlOptions, SchedClassifierLink, TcAttachOptions, TcError, TcHandle},
};
use tracing::debug;

use super::EbpfError;

/// The netlink filter priority of our programs. Fixed, so a restarted agent finds (and
/// replaces) its filter; chosen away from tc's automatic 49152 and common small values.
pub const TC_PRIORITY: u16 = 0x4f56;
/// The netlink filter handle of our programs.
pub const TC_HANDLE: TcHandle = TcHandle::new(0, 1);

/// How an attach went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Attached {
    /// A previous agent's program was replaced in place.
    Replaced,
    /// Newly attached.
    New,
    /// Newly attached, after adding the interface's `clsact` qdisc (netlink attach).
    NewWithQdisc,
}

fn attach_err<'a>(program: &'static str, ifname: &'a str) -> impl FnOnce(aya::programs::ProgramError) -> EbpfError + 'a {
    move |source| EbpfError::Attach { program, interface: ifname.to_owned(), source }
}

/// Attaches `prog` (named `name`) to the TC ingress of `ifname`, replacing in place a
/// program that a previous run attached there. `pin`: where the tcx link is pinned.
pub fn attach(
    prog: &mut SchedClassifier,
    name: &'static str,
    ifname: &str,
    pin: &Path,
    tcx: bool,
) -> Result<Attached, EbpfError> {
    if tcx { attach_tcx(prog, name, ifname, pin) } else { attach_netlink(prog, name, ifname) }
}

fn attach_tcx(prog: &mut SchedClassifier, name: &'static str, ifname: &str, pin: &Path) -> Result<Attached, EbpfError> {
    match PinnedLink::from_pin(pin) {
        Ok(pinned) => {
            let replaced = SchedClassifierLink::try_from(FdLink::from(pinned))
                .map_err(|source| EbpfError::Link { path: pin.to_owned(), source })
                .and_then(|link| prog.attach_to_link(link).map_err(attach_err(name, ifname)));
            match replaced {
                Ok(id) => {
                    // The pin keeps the link; our descriptor may go.
                    let link = prog.take_link(id).map_err(attach_err(name, ifname))?;
                    drop(FdLink::try_from(link).map_err(|source| EbpfError::Link { path: pin.to_owned(), source })?);
                    return Ok(Attached::Replaced);
                }
                Err(e) => {
                    // A link whose device is gone, or not a tcx link: start afresh.
                    debug!(pin = %pin.display(), error = %e, "cannot reuse the pinned link; attaching anew");
                    remove_pin(pin)?;
                }
            }
        }
        Err(LinkError::SyscallError(e)) if e.io_error.kind() == ErrorKind::NotFound => {}
        Err(source) => return Err(EbpfError::Link { path: pin.to_owned(), source }),
    }
    let id = prog
        .attach_with_options(ifname, TcAttachType::Ingress, TcAttachOptions::TcxOrder(LinkOrder::default()))
        .map_err(attach_err(name, ifname))?;
    let link = prog.take_link(id).map_err(attach_err(name, ifname))?;
    let fd = FdLink::try_from(link).map_err(|source| EbpfError::Link { path: pin.to_owned(), source })?;
    if let Some(dir) = pin.parent() {
        std::fs::create_dir_all(dir).map_err(|source| EbpfError::Io { path: dir.to_owned(), source })?;
    }
    fd.pin(pin).map_err(|source| EbpfError::Pin { path: pin.to_owned(), source })?;
    Ok(Attached::New)
}

fn netlink_options() -> TcAttachOptions {
    TcAttachOptions::Netlink(NlOptions { priority: TC_PRIORITY, handle: TC_HANDLE, ..Default::default() })
}

fn attach_netlink(prog: &mut SchedClassifier, name: &'static str, ifname: &str) -> Result<Attached, EbpfError> {
    let existing = SchedClassifierLink::attached(ifname, TcAttachType::Ingress, TC_PRIORITY, TC_HANDLE, None)
        .map_err(|source| EbpfError::Io { path: ifname.into(), source })?;
    let (id, how) = match prog.attach_to_link(existing) {
        Ok(id) => (id, Attached::Replaced),
        Err(e) => {
            // No filter of ours there yet (ENOENT): add the qdisc if needed, then create.
            debug!(interface = ifname, error = %e, "no filter to replace; attaching anew");
            let how = match tc::qdisc_add_clsact(ifname) {
                Ok(()) => Attached::NewWithQdisc,
                Err(TcError::NetlinkError(e)) if e.raw_os_error() == Some(libc::EEXIST) => Attached::New,
                Err(source) => return Err(EbpfError::Clsact { interface: ifname.into(), source }),
            };
            let id = prog
                .attach_with_options(ifname, TcAttachType::Ingress, netlink_options())
                .map_err(attach_err(name, ifname))?;
            (id, how)
        }
    };
    let link = prog.take_link(id).map_err(attach_err(name, ifname))?;
    // A netlink link is only (ifindex, priority, handle): forgetting it leaves the filter
    // in place and leaks nothing.
    std::mem::forget(link);
    Ok(how)
}

/// Removes our program from `ifname` (unpins the tcx link, or deletes the netlink
/// filter); fine if it is not there (or the interface is gone).
pub fn detach(ifname: &str, pin: &Path, tcx: bool) -> Result<(), EbpfError> {
    if tcx {
        return remove_pin(pin);
    }
    let link = match SchedClassifierLink::attached(ifname, TcAttachType::Ingress, TC_PRIORITY, TC_HANDLE, None) {
        Ok(l) => l,
        Err(e) if e.raw_os_error() == Some(libc::ENODEV) => return Ok(()),
        Err(source) => return Err(EbpfError::Io { path: ifname.into(), source }),
    };
    match aya::programs::links::Link::detach(link) {
        Ok(()) => Ok(()),
        Err(aya::programs::ProgramError::NetlinkError(e)) if matches!(e.raw_os_error(), Some(libc::ENOENT | libc::ENODEV | libc::EINVAL)) => Ok(()),
        Err(source) => Err(EbpfError::Detach { interface: ifname.into(), source }),
    }
}

fn remove_pin(pin: &Path) -> Result<(), EbpfError> {
    match std::fs::remove_file(pin) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
        Err(source) => Err(EbpfError::Io { path: pin.to_owned(), source }),
    }
}
