//! Ctrl-C and SIGTERM for the long-running lab binaries (`overlay-lab --keep`,
//! `overlay-bench`): the signal only sets a flag, the binary finishes its current step and
//! returns, and the topology's guards tear everything down on drop. Killed outright, the
//! agents would leave pins and the namespaces would stay.

use std::sync::atomic::{AtomicBool, Ordering};

use nix::sys::signal::{SaFlags, SigAction, SigHandler, SigSet, Signal, sigaction};

static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    STOP.store(true, Ordering::SeqCst);
}

/// Installs the SIGINT and SIGTERM handlers. Children get default handlers back at exec.
pub fn install() -> Result<(), String> {
    let action = SigAction::new(SigHandler::Handler(on_signal), SaFlags::SA_RESTART, SigSet::empty());
    for sig in [Signal::SIGINT, Signal::SIGTERM] {
        // SAFETY: the handler only stores to an atomic.
        unsafe { sigaction(sig, &action) }.map_err(|e| format!("installing a {sig} handler: {e}"))?;
    }
    Ok(())
}

/// Whether Ctrl-C or SIGTERM arrived.
pub fn requested() -> bool {
    STOP.load(Ordering::SeqCst)
}

/// Sleeps until Ctrl-C or SIGTERM.
pub fn wait() {
    while !requested() {
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
}
