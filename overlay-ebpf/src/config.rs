//! The host-wide datapath configuration written by the agent.

use overlay_common::DatapathConfig;

/// The configuration, or `None` while the agent has not written a VTEP address yet (an
/// all-zero `OVL_CONFIG[0]`, which is what the kernel creates the array with).
#[inline(always)]
pub fn get() -> Option<&'static DatapathConfig> {
    let config = crate::OVL_CONFIG.get(0)?;
    if config.vtep == [0; 4] {
        return None;
    }
    Some(config)
}
