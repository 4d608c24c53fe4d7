//! Flooding observed where the copies land: the program runs (`BPF_PROG_TEST_RUN`) in a
//! network namespace of the test's own with veth pairs standing for the containers'
//! host-side veths; `bpf_clone_redirect` really sends its copies there, so a packet
//! socket on each peer sees exactly what a container would get. The last target gets
//! the original by `TC_ACT_REDIRECT`, which a test run reports but does not carry out.

use std::{
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
    process::Command,
    time::Duration,
};

use overlay_common::{Direction, Reason, programs};

use super::{LO, Progs, TC_ACT_REDIRECT, flood_list, frame_a_to_b};

/// Runs `f` on a thread of its own in a fresh network namespace (gone with the thread):
/// nothing the test creates is visible anywhere else.
fn in_private_netns<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    std::thread::spawn(move || {
        nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET).expect("unshare(CLONE_NEWNET): the prog tests need root");
        // No IPv6 on the links made here: their router solicitations and MLD reports
        // would land in the captures. /proc/sys/net is the opening thread's namespace's.
        for key in ["all", "default"] {
            std::fs::write(format!("/proc/sys/net/ipv6/conf/{key}/disable_ipv6"), "1").expect("disabling IPv6 in the test namespace");
        }
        f()
    })
    .join()
    .unwrap_or_else(|p| std::panic::resume_unwind(p))
}

/// `ip ...` in the calling thread's network namespace (a child forked from this thread
/// starts in it).
fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("ip (iproute2)");
    assert!(out.status.success(), "ip {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

fn ifindex(name: &str) -> u32 {
    let c = std::ffi::CString::new(name).unwrap();
    // SAFETY: a valid C string.
    let i = unsafe { libc::if_nametoindex(c.as_ptr()) };
    assert_ne!(i, 0, "no interface {name}");
    i
}

/// A packet socket that receives every frame arriving on `name`.
fn capture(name: &str) -> OwnedFd {
    // SAFETY: plain syscall; on success we own the descriptor.
    let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_NONBLOCK, (libc::ETH_P_ALL as u16).to_be().into()) };
    assert!(fd >= 0, "packet socket: {}", std::io::Error::last_os_error());
    // SAFETY: `fd` is fresh and ours.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: all-zero is a valid sockaddr_ll.
    let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    addr.sll_family = libc::AF_PACKET as u16;
    addr.sll_protocol = (libc::ETH_P_ALL as u16).to_be();
    addr.sll_ifindex = ifindex(name) as i32;
    // SAFETY: `addr` is a live sockaddr_ll of the size given.
    let r = unsafe {
        libc::bind(fd.as_raw_fd(), (&raw const addr).cast(), std::mem::size_of::<libc::sockaddr_ll>() as u32)
    };
    assert_eq!(r, 0, "bind to {name}: {}", std::io::Error::last_os_error());
    fd
}

/// Every frame queued on `fd` (after the veth's backlog has run).
fn frames(fd: &OwnedFd) -> Vec<Vec<u8>> {
    std::thread::sleep(Duration::from_millis(100));
    let mut out = Vec::new();
    let mut buf = vec![0u8; 65_536];
    loop {
        // SAFETY: `buf` is writable for its length.
        let n = unsafe { libc::recv(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), libc::MSG_DONTWAIT) };
        if n < 0 {
            break;
        }
        out.push(buf[..n as usize].to_vec());
    }
    out
}

#[test]
fn every_other_endpoint_gets_one_copy_and_a_lost_copy_is_counted() {
    in_private_netns(|| {
        // p1..p3 stand for three host-side veths; q1..q3 are what their containers see.
        for i in 1..=3 {
            ip(&["link", "add", &format!("p{i}"), "type", "veth", "peer", "name", &format!("q{i}")]);
            ip(&["link", "set", &format!("p{i}"), "up"]);
            ip(&["link", "set", &format!("q{i}"), "up"]);
        }
        let (p1, p2, p3) = (ifindex("p1"), ifindex("p2"), ifindex("p3"));
        let caps = [capture("q1"), capture("q2"), capture("q3")];
        let mut p = Progs::host1();
        let mut bcast = frame_a_to_b(40);
        bcast[0..6].copy_from_slice(&[0xff; 6]);

        // From the container behind LO: copies to p1 and p2, none back to the sender,
        // and p3 stands for the VXLAN device, which gets the original (the redirect).
        // An endpoint that vanished (ifindex 999999) loses its copy, counted.
        p.flood_set(flood_list(p3, &[LO, p1, 999_999, p2]));
        let (ret, _) = p.run(programs::FROM_CONTAINER, &bcast);
        assert_eq!(ret, TC_ACT_REDIRECT);
        let got: Vec<Vec<Vec<u8>>> = caps.iter().map(frames).collect();
        assert_eq!(got[0], vec![bcast.clone()], "one unchanged copy for p1's container");
        assert_eq!(got[1], vec![bcast.clone()], "one unchanged copy for p2's container");
        assert!(got[2].is_empty(), "the last target gets the original through the redirect, not a clone");
        assert_eq!(p.count(Direction::FromContainer, Reason::Flooded), 1, "the frame counted once");
        assert_eq!(p.count(Direction::FromContainer, Reason::FloodCopyFailed), 1, "the lost copy counted");
        assert_eq!(p.total(), 1);

        // From the underlay (decapsulated broadcast): every local endpoint, never back
        // out through the VXLAN device.
        p.flood_set(flood_list(p3, &[p1, p2]));
        let (_, wire) = {
            let mut unicast = p.run(programs::FROM_CONTAINER, &frame_a_to_b(40));
            unicast.1[50..56].copy_from_slice(&[0xff; 6]);
            unicast
        };
        p.become_host2();
        let (ret, _) = p.run(programs::FROM_UNDERLAY, &wire);
        assert_eq!(ret, TC_ACT_REDIRECT);
        let got: Vec<Vec<Vec<u8>>> = caps.iter().map(frames).collect();
        assert_eq!(got[0], vec![wire[50..].to_vec()], "p1's container gets the decapsulated frame");
        assert!(got[1].is_empty(), "p2 is the last local target: the original goes there by the redirect");
        assert!(got[2].is_empty(), "nothing goes back to the underlay");
        assert_eq!(p.count(Direction::FromUnderlay, Reason::Flooded), 1);
    });
}
