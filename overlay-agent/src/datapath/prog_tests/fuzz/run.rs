//! Running the frames through a program and comparing verdicts, output and counters
//! with the model.

use super::*;

/// One program's fuzzing: what to send it, and what it should do.
pub(super) struct Target {
    pub(super) prog: &'static str,
    pub(super) dir: Direction,
    pub(super) model: fn(&World, &[u8]) -> Prediction,
    pub(super) templates: Vec<Template>,
    pub(super) fields: &'static [(usize, Kind)],
    pub(super) lengths: &'static [usize],
    /// Whether mutated frames get their outer IPv4 lengths and checksum fixed again.
    pub(super) refix_outer: bool,
    /// The first is the maps as set up.
    pub(super) variants: &'static [Variant],
    /// Brings back what the variants change.
    pub(super) restore: fn(&mut Progs),
    pub(super) reachable: &'static [Reason],
}

/// One frame and how it came about, for the failure message.
pub(super) struct Case {
    pub(super) iteration: u64,
    pub(super) variant: &'static str,
    pub(super) origin: String,
    pub(super) frame: Vec<u8>,
}

/// Every counter of both directions.
pub(super) struct Counters(pub(super) BTreeMap<(Direction, Reason), u64>);

impl Counters {
    pub(super) fn read(p: &Progs) -> Counters {
        let reasons = Reason::ALL.into_iter().filter(|r| *r != Reason::UpgradeTestMarker);
        let keys = Direction::ALL.into_iter().flat_map(|d| reasons.clone().map(move |r| (d, r)));
        Counters(keys.map(|(d, r)| ((d, r), p.count(d, r))).collect())
    }

    pub(super) fn get(&self, dir: Direction, reason: Reason) -> u64 {
        self.0[&(dir, reason)]
    }

    pub(super) fn add(&mut self, dir: Direction, reason: Reason) {
        *self.0.get_mut(&(dir, reason)).unwrap() += 1;
    }

    /// The counters whose value in the map differs from this tally.
    pub(super) fn differences(&self, p: &Progs) -> String {
        let now = Counters::read(p);
        let mut s = String::new();
        for (&(dir, reason), &want) in &self.0 {
            let got = now.0[&(dir, reason)];
            if got != want {
                write!(s, "\n    {} {}: counted {got}, the model {want}", dir.name(), reason.name()).unwrap();
            }
        }
        s
    }
}

pub(super) struct Fuzzer<'a> {
    pub(super) p: &'a mut Progs,
    pub(super) t: &'a Target,
    pub(super) seed: u64,
    pub(super) rng: Rng,
    /// What the counters must say: as read before the first frame, plus the model's reasons.
    pub(super) tally: Counters,
    pub(super) first_total: u64,
    pub(super) seen: BTreeMap<Reason, u64>,
    pub(super) iteration: u64,
    pub(super) last_checkpoint: u64,
    pub(super) ran: u64,
    /// Refused frames (not counted: the checkpoints see to it): shorter than Ethernet, and
    /// IPv4 or IPv6 shorter than their header.
    pub(super) refused: (u64, u64),
    pub(super) out: Vec<u8>,
}

impl<'a> Fuzzer<'a> {
    pub(super) fn new(p: &'a mut Progs, t: &'a Target) -> Fuzzer<'a> {
        let seed = seed();
        eprintln!("{}: seed {seed:#x} (OVERLAY_FUZZ_SEED replays it)", t.prog);
        let (tally, first_total) = (Counters::read(p), p.total());
        Fuzzer {
            p,
            t,
            seed,
            rng: Rng(seed),
            tally,
            first_total,
            seen: BTreeMap::new(),
            iteration: 0,
            last_checkpoint: 0,
            ran: 0,
            refused: (0, 0),
            // Larger than any frame plus VXLAN: BPF_PROG_TEST_RUN fails when the output does not fit.
            out: vec![0; 4096],
        }
    }

    pub(super) fn run(mut self) {
        let started = Instant::now();
        for phase in 0..(FRAMES / PHASE) as usize {
            // Every variant once, then the maps as set up for half of the phases.
            let variants = self.t.variants;
            let variant = match variants.get(phase) {
                Some(v) => *v,
                None if self.rng.chance(2) => variants[0],
                None => self.rng.pick(variants),
            };
            (self.t.restore)(self.p);
            (variant.apply)(self.p);
            let world = World::read(self.p);
            let end = self.ran + PHASE;
            while self.ran < end {
                self.iteration += 1;
                let (origin, frame) = generate(&mut self.rng, self.t);
                self.one(&Case { iteration: self.iteration, variant: variant.name, origin, frame }, &world);
            }
        }
        self.finish(started);
    }

    pub(super) fn one(&mut self, case: &Case, world: &World) {
        let result = test_run(self.p, self.t.prog, &case.frame, &mut self.out);
        let refused = result.as_ref().is_err_and(|e| {
            matches!(e, ProgramError::SyscallError(e) if e.io_error.raw_os_error() == Some(libc::EINVAL))
        });
        match refusal(&case.frame) {
            Refusal::Must if !refused => self.fail(case, format!("not refused (EINVAL): {result:?}")),
            Refusal::Must => {
                self.refused.0 += 1;
                return;
            }
            Refusal::May if refused => {
                self.refused.1 += 1;
                return;
            }
            _ => {}
        }
        let (ret, len) = result.unwrap_or_else(|e| self.fail(case, format!("BPF_PROG_TEST_RUN: {e:?}")));
        let prediction = (self.t.model)(world, &case.frame);
        self.expect_action(case, &prediction, ret);
        self.expect_counted(case, prediction.reason);
        for _ in 0..prediction.lost_copies {
            self.tally.add(self.t.dir, Reason::FloodCopyFailed);
        }
        if let Err(what) = check_out(&prediction.out, &case.frame, &self.out[..len]) {
            self.fail(case, format!("{}: {what}", prediction.reason.name()));
        }
        self.ran += 1;
        if self.ran.is_multiple_of(CHECKPOINT) {
            self.checkpoint();
        }
    }

    pub(super) fn expect_action(&self, case: &Case, prediction: &Prediction, ret: u32) {
        let want = action(prediction.reason);
        if ret == TC_ACT_REDIRECT && want != TC_ACT_REDIRECT {
            let what = format!("DELIVERED (TC_ACT_REDIRECT) a frame the model gives {}", prediction.reason.name());
            self.fail(case, what);
        }
        if ret != want {
            self.fail(case, format!("action {ret}, the model says {want} ({})", prediction.reason.name()));
        }
    }

    /// The model's reason counted the frame; the checkpoints see that nothing else did.
    pub(super) fn expect_counted(&mut self, case: &Case, reason: Reason) {
        self.tally.add(self.t.dir, reason);
        if self.p.count(self.t.dir, reason) != self.tally.get(self.t.dir, reason) {
            let what = format!("not counted as {}:{}", reason.name(), self.tally.differences(self.p));
            self.fail(case, what);
        }
        *self.seen.entry(reason).or_default() += 1;
    }

    pub(super) fn checkpoint(&mut self) {
        let differences = self.tally.differences(self.p);
        assert!(
            differences.is_empty(),
            "{}: seed {:#x}, iterations {}..={}: counters the model did not predict:{differences}",
            self.t.prog,
            self.seed,
            self.last_checkpoint + 1,
            self.iteration,
        );
        self.last_checkpoint = self.iteration;
    }

    pub(super) fn finish(mut self, started: Instant) {
        self.checkpoint();
        assert_eq!(self.p.total() - self.first_total, self.ran, "every frame run is counted once");
        let reasons = self.seen.iter().fold(String::new(), |mut s, (reason, n)| {
            write!(s, "\n    {:<24} {n}", reason.name()).unwrap();
            s
        });
        eprintln!(
            "{}: {} frames in {:.1?}; refused: {} shorter than Ethernet, {} IPv4/IPv6 shorter than their header; \
             reasons:{reasons}",
            self.t.prog,
            self.ran,
            started.elapsed(),
            self.refused.0,
            self.refused.1,
        );
        for reason in self.t.reachable {
            assert!(self.seen.contains_key(reason), "{}: no frame reached {}", self.t.prog, reason.name());
        }
    }

    pub(super) fn fail(&self, case: &Case, what: String) -> ! {
        panic!(
            "{}: {what}\n  seed {:#x} (OVERLAY_FUZZ_SEED), iteration {}, maps {}\n  frame: {}\n  {} bytes: {}",
            self.t.prog,
            self.seed,
            case.iteration,
            case.variant,
            case.origin,
            case.frame.len(),
            hex(&case.frame),
        )
    }
}

/// Whether `BPF_PROG_TEST_RUN` refuses a frame before the program sees it.
pub(super) enum Refusal {
    /// Shorter than an Ethernet header (`bpf_prog_test_run_skb`).
    Must,
    /// An IPv4 or IPv6 frame shorter than its network header: 6.18 refuses them (so the
    /// container program's "IPv4 shorter than its header" check cannot be reached here),
    /// older kernels run them.
    May,
    Never,
}

pub(super) fn refusal(frame: &[u8]) -> Refusal {
    if frame.len() < ETH_END {
        return Refusal::Must;
    }
    match ether_type(frame) {
        ETH_IPV4 if frame.len() < IP_END => Refusal::May,
        ETH_IPV6 if frame.len() < ETH_END + 40 => Refusal::May,
        _ => Refusal::Never,
    }
}

/// Runs `prog` on `frame`: (return value, bytes written to `out`).
pub(super) fn test_run(p: &Progs, prog: &str, frame: &[u8], out: &mut [u8]) -> Result<(u32, usize), ProgramError> {
    let prog: &SchedClassifier = p.ebpf.program(prog).unwrap().try_into().unwrap();
    let r = prog.test_run(TestRunOptions { data_in: Some(frame), data_out: Some(out), ..Default::default() })?;
    Ok((r.return_value, r.data_size_out as usize))
}

