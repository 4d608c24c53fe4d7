//! Start-up probes: which `bpf_skb_adjust_room` flags this kernel really accepts.
//!
//! Version numbers lie (distributions backport) and so do load-time checks: on 5.10,
//! `BPF_F_ADJ_ROOM_ENCAP_L2_ETH` passes the verifier and then makes every call fail
//! with -EINVAL. So the agent runs a tiny program with `BPF_PROG_TEST_RUN` on crafted
//! packets and keeps the flags that worked.

use aya::{
    maps::{Array, MapData},
    programs::{SchedClassifier, TestRun, TestRunOptions},
};
use overlay_common::{ProbeArgs, adjust_room, vxlan};
use serde::Serialize;

/// What the probes found.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Features {
    pub encap_flags: u64,
    pub decap_flags: u64,
    /// `ENCAP_L2_ETH` works: NICs can offload the tunnel's segmentation/checksums.
    pub encap_l2_eth: bool,
    /// `NO_CSUM_RESET` works: an inner checksum verdict survives decapsulation.
    pub no_csum_reset: bool,
    /// `bpf_csum_level` works.
    pub csum_level: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error("running the probe program with BPF_PROG_TEST_RUN: {source}")]
    Run {
        #[source]
        source: aya::programs::ProgramError,
    },
    #[error("probe map: {source}")]
    Map {
        #[source]
        source: aya::maps::MapError,
    },
    #[error(
        "this kernel's bpf_skb_adjust_room rejects {what} (flags {flags:#x}, error {ret}); \
         the eBPF datapath needs Linux 5.10 or newer"
    )]
    Unsupported { what: &'static str, flags: u64, ret: i64 },
}

/// An Ethernet + IPv4 + UDP frame with `payload` bytes of payload.
pub fn udp_frame(payload: usize) -> Vec<u8> {
    let ip_len = 20 + 8 + payload;
    let mut f = Vec::with_capacity(14 + ip_len);
    f.extend_from_slice(&[0x02, 0x42, 10, 0, 10, 11, 0x02, 0x42, 10, 0, 10, 10, 0x08, 0x00]);
    let mut ip = [
        0x45, 0, 0, 0, 0, 0, 0x40, 0, 64, 17, 0, 0, 10, 0, 10, 10, 10, 0, 10, 11,
    ];
    ip[2..4].copy_from_slice(&(ip_len as u16).to_be_bytes());
    let csum = ipv4_checksum(&ip);
    ip[10..12].copy_from_slice(&csum.to_be_bytes());
    f.extend_from_slice(&ip);
    f.extend_from_slice(&[0x30, 0x39, 0x30, 0x39]);
    f.extend_from_slice(&((8 + payload) as u16).to_be_bytes());
    f.extend_from_slice(&[0, 0]);
    f.extend((0..payload).map(|i| i as u8));
    f
}

/// RFC 1071 checksum of an IPv4 header (checksum field included as is).
pub fn ipv4_checksum(header: &[u8]) -> u16 {
    let mut sum: u32 = header
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

fn run(
    prog: &SchedClassifier,
    args_map: &mut Array<MapData, ProbeArgs>,
    args: ProbeArgs,
    packet: &[u8],
) -> Result<ProbeArgs, ProbeError> {
    args_map.set(0, args, 0).map_err(|source| ProbeError::Map { source })?;
    let mut out = vec![0u8; packet.len() + 256];
    let opts = TestRunOptions {
        data_in: Some(packet),
        data_out: Some(&mut out),
        ..Default::default()
    };
    prog.test_run(opts).map_err(|source| ProbeError::Run { source })?;
    args_map.get(&0, 0).map_err(|source| ProbeError::Map { source })
}

pub fn probe(prog: &SchedClassifier, args_map: &mut Array<MapData, ProbeArgs>) -> Result<Features, ProbeError> {
    let grow = vxlan::OVERHEAD as i32;
    let inner = udp_frame(64);
    let encap = |flags| ProbeArgs { len_diff: grow, flags, ..Default::default() };

    let with_eth = adjust_room::ENCAP_BASE | adjust_room::ENCAP_L2_ETH;
    let encap_l2_eth = run(prog, args_map, encap(with_eth), &inner)?.ret == 0;
    let base = run(prog, args_map, encap(adjust_room::ENCAP_BASE), &inner)?;
    if base.ret != 0 {
        return Err(ProbeError::Unsupported {
            what: "VXLAN encapsulation",
            flags: adjust_room::ENCAP_BASE,
            ret: base.ret,
        });
    }

    // A VXLAN packet to shrink: 50 bytes of (pretend) outer headers after the MAC header.
    let mut outer = udp_frame(64 + vxlan::OVERHEAD as usize);
    outer.truncate(14 + 20 + 8);
    outer.extend_from_slice(&[vxlan::FLAG_VNI_VALID, 0, 0, 0, 0, 0, 42, 0]);
    outer.extend_from_slice(&inner);
    let decap = |flags, csum_level| ProbeArgs { len_diff: -grow, flags, csum_level, ..Default::default() };
    let no_reset = adjust_room::DECAP_BASE | adjust_room::NO_CSUM_RESET;
    let r = run(prog, args_map, decap(no_reset, 1), &outer)?;
    let no_csum_reset = r.ret == 0;
    // QUERY returns the level, or -EACCES when the skb is not CHECKSUM_UNNECESSARY,
    // which a BPF_PROG_TEST_RUN skb never is: both mean the helper works. A kernel
    // without the helper would not have loaded the probe at all.
    let csum_level = r.csum_ret >= 0 || r.csum_ret == -i64::from(libc::EACCES);
    let base = run(prog, args_map, decap(adjust_room::DECAP_BASE, 0), &outer)?;
    if base.ret != 0 {
        return Err(ProbeError::Unsupported {
            what: "VXLAN decapsulation",
            flags: adjust_room::DECAP_BASE,
            ret: base.ret,
        });
    }
    Ok(Features {
        encap_flags: if encap_l2_eth { with_eth } else { adjust_room::ENCAP_BASE },
        decap_flags: if no_csum_reset { no_reset } else { adjust_room::DECAP_BASE },
        encap_l2_eth,
        no_csum_reset,
        csum_level,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frame_has_valid_ip_checksum_and_lengths() {
        let f = udp_frame(10);
        assert_eq!(f.len(), 14 + 20 + 8 + 10);
        assert_eq!(ipv4_checksum(&f[14..34]), 0, "a correct header sums to 0xffff");
        assert_eq!(u16::from_be_bytes([f[16], f[17]]), 38);
        assert_eq!(u16::from_be_bytes([f[38], f[39]]), 18);
    }
}
