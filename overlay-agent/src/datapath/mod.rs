//! The datapath: how frames actually move. The agent decides *what* must be forwarded
//! ([`Desired`], kept up to date change by change); a [`Datapath`] makes the kernel do
//! it: the eBPF programs and maps ([`ebpf`]) or the kernel's own bridge and VXLAN
//! devices ([`kernel`]).
//!
//! A datapath outlives the agent: [`Datapath::release`] (SIGTERM, a crash) leaves it all
//! in the kernel, and the next start adopts it, swapping programs in place and reading
//! the tables back to change only what differs. Only [`Datapath::remove`] (`overlay-agent
//! down`, a mode switch) takes it away.

pub mod devices;
pub mod ebpf;
pub mod inspect;
pub mod kernel;
pub mod pinned;
pub mod probe;
#[cfg(test)]
mod prog_tests;

use serde::{Deserialize, Serialize};

pub use crate::desired::{Desired, Dirty, FdbTarget, LocalEndpoint, Remote, Router};

/// What `status` shows about the datapath.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct DatapathStatus {
    pub mode: String,
    /// Why this mode, or which kernel features it uses.
    pub detail: String,
}

/// How full one table is.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct TableUsage {
    pub name: String,
    pub entries: u64,
    /// `None`: the kernel's table has no fixed size (kernel mode).
    pub capacity: Option<u64>,
    /// Entries that should be installed but did not fit (counted, logged, retried as
    /// room frees up).
    pub not_installed: u64,
}

/// What an apply or resync did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Applied {
    /// Entries written or removed.
    pub changed: usize,
    /// Entries that did not fit.
    pub full: usize,
}

impl std::ops::AddAssign for Applied {
    fn add_assign(&mut self, o: Self) {
        self.changed += o.changed;
        self.full += o.full;
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DatapathError {
    #[error(transparent)]
    Ebpf(#[from] ebpf::EbpfError),
    #[error(transparent)]
    Devices(#[from] devices::DeviceError),
    #[error(transparent)]
    Firewall(#[from] crate::firewall::FirewallError),
    #[error("map {map} is full ({capacity} entries): raise [datapath] {setting} and restart the agent")]
    Full { map: &'static str, capacity: u32, setting: &'static str },
}

#[expect(async_fn_in_trait, reason = "used with static dispatch on the agent's own runtime")]
pub trait Datapath {
    fn status(&self) -> DatapathStatus;

    /// Fill levels of the tables.
    fn usage(&self) -> Vec<TableUsage>;

    /// Fails with [`DatapathError::Full`] unless one more local endpoint fits.
    fn check_room(&self) -> Result<(), DatapathError>;

    /// Makes a host-side veth part of the datapath. Idempotent: on a veth adopted from
    /// an earlier run, the program is replaced in place (no moment without one).
    async fn attach_endpoint(&mut self, ep: &LocalEndpoint) -> Result<(), DatapathError>;

    /// Undoes [`Datapath::attach_endpoint`]; fine if the veth is already gone.
    async fn detach_endpoint(&mut self, ep: &LocalEndpoint) -> Result<(), DatapathError>;

    /// Writes the `dirty` entries as `desired` has them now: upserts first, then
    /// removals, so a changed entry never blackholes.
    async fn apply(&mut self, desired: &Desired, dirty: &Dirty) -> Result<Applied, DatapathError>;

    /// Reads what the kernel holds and makes it equal `desired` (after adopting a running
    /// datapath, after a full store list, and periodically in kernel mode).
    async fn resync(&mut self, desired: &Desired) -> Result<Applied, DatapathError>;

    /// Leaves everything running in the kernel (SIGTERM): the next start adopts it.
    fn release(self);

    /// Removes everything this datapath made (`overlay-agent down`), trying every step
    /// and returning every failure.
    async fn remove(self) -> Vec<DatapathError>;
}

/// The datapath the agent runs: chosen at start-up by `[datapath] mode`.
pub enum AnyDatapath {
    /// Both boxed: they differ in size, and the agent holds one for its whole life.
    Ebpf(Box<ebpf::EbpfDatapath>),
    Kernel(Box<kernel::KernelDatapath>),
}

impl AnyDatapath {
    pub fn mode(&self) -> &'static str {
        match self {
            AnyDatapath::Ebpf(_) => "ebpf",
            AnyDatapath::Kernel(_) => "kernel",
        }
    }
}

macro_rules! each {
    ($self:ident, $d:ident => $e:expr) => {
        match $self {
            AnyDatapath::Ebpf($d) => $e,
            AnyDatapath::Kernel($d) => $e,
        }
    };
}

impl Datapath for AnyDatapath {
    fn status(&self) -> DatapathStatus {
        each!(self, d => d.status())
    }

    fn usage(&self) -> Vec<TableUsage> {
        each!(self, d => d.usage())
    }

    fn check_room(&self) -> Result<(), DatapathError> {
        each!(self, d => d.check_room())
    }

    async fn attach_endpoint(&mut self, ep: &LocalEndpoint) -> Result<(), DatapathError> {
        each!(self, d => d.attach_endpoint(ep).await)
    }

    async fn detach_endpoint(&mut self, ep: &LocalEndpoint) -> Result<(), DatapathError> {
        each!(self, d => d.detach_endpoint(ep).await)
    }

    async fn apply(&mut self, desired: &Desired, dirty: &Dirty) -> Result<Applied, DatapathError> {
        each!(self, d => d.apply(desired, dirty).await)
    }

    async fn resync(&mut self, desired: &Desired) -> Result<Applied, DatapathError> {
        each!(self, d => d.resync(desired).await)
    }

    fn release(self) {
        match self {
            AnyDatapath::Ebpf(d) => (*d).release(),
            AnyDatapath::Kernel(d) => (*d).release(),
        }
    }

    async fn remove(self) -> Vec<DatapathError> {
        match self {
            AnyDatapath::Ebpf(d) => (*d).remove().await,
            AnyDatapath::Kernel(d) => (*d).remove().await,
        }
    }
}
