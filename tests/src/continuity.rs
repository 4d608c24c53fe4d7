//! Traffic that runs in the background while a test restarts or upgrades agents, and
//! says afterwards exactly what it lost:
//!
//! - [`Pinger`]: an ICMP echo request every 10 ms from a container namespace, on its
//!   own thread, never waiting for replies; [`Pinger::stop`] lists every request that
//!   went unanswered (only the last [`IN_FLIGHT`] before the stop are forgiven);
//! - [`LongConnection`]: one TCP connection between two namespaces that carries a
//!   numbered byte stream in small paced writes; the server checks every byte, and
//!   [`LongConnection::stop`] reports a reset, a stall, a gap or a corruption.
//!
//! Both make their sockets inside the namespaces (see [`crate::NetNs::run`]) and then
//! run on ordinary threads. Dropping either without `stop` (a failing test) stops its
//! threads and joins them.

mod numbered;
mod pinger;
mod stream;

pub use pinger::{IN_FLIGHT, PING_INTERVAL, PingReport, Pinger};
pub use stream::{LongConnection, Side, StreamError, StreamOptions, StreamReport};
