//! `cargo xtask bench`: eBPF overlay vs kernel VXLAN recipe vs direct routing, in
//! interleaved rounds, medians and ratios, a table and a JSON file.
//! Usage: overlay-bench [--quick] [--rounds N] [--secs S] [--json FILE]
//!                      [--setups ebpf,kernel,direct] [--metrics NAME,...] [--hold SETUP]
//!                      [--preload N]
//!
//! `--preload N` puts N static remote endpoints into the eBPF setup's store before its
//! agents start (maps sized for them), to compare its figures with near-empty maps.
//!
//! `--hold SETUP` builds one topology, prints its namespaces and waits for Ctrl-C (for
//! profiling by hand: `perf record -a`, `bpftool prog profile`), then tears it down.
//! Ctrl-C or SIGTERM during a run stops after the current measurement and tears down.

use std::{collections::BTreeMap, process::ExitCode, time::Duration};

use integration_tests::{
    bench::{self, Setup},
    interrupt,
};

struct Opts {
    rounds: usize,
    secs: u32,
    json: String,
    setups: Vec<Setup>,
    metrics: Vec<&'static str>,
    hold: Option<Setup>,
    preload: usize,
}

fn setup_named(name: &str) -> Result<Setup, String> {
    Setup::ALL.into_iter().find(|s| s.name() == name).ok_or_else(|| {
        let all: Vec<_> = Setup::ALL.iter().map(|s| s.name()).collect();
        format!("unknown setup {name:?} ({})", all.join(", "))
    })
}

fn metric_named(name: &str) -> Result<&'static str, String> {
    METRICS.iter().map(|m| m.0).find(|m| *m == name).ok_or_else(|| {
        let all: Vec<_> = METRICS.iter().map(|m| m.0).collect();
        format!("unknown metric {name:?} ({})", all.join(", "))
    })
}

fn parse() -> Result<Opts, String> {
    let mut o = Opts {
        rounds: 3,
        secs: 5,
        json: "target/bench/results.json".into(),
        setups: Setup::ALL.to_vec(),
        metrics: METRICS.iter().map(|m| m.0).collect(),
        hold: None,
        preload: 0,
    };
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--quick" => {
                o.rounds = 1;
                o.secs = 2;
            }
            "--rounds" => o.rounds = args.next().and_then(|v| v.parse().ok()).ok_or("--rounds N")?,
            "--secs" => o.secs = args.next().and_then(|v| v.parse().ok()).ok_or("--secs S")?,
            "--json" => o.json = args.next().ok_or("--json FILE")?,
            "--setups" => {
                o.setups = args.next().ok_or("--setups a,b")?.split(',').map(setup_named).collect::<Result<_, _>>()?
            }
            "--metrics" => {
                o.metrics = args.next().ok_or("--metrics a,b")?.split(',').map(metric_named).collect::<Result<_, _>>()?
            }
            "--hold" => o.hold = Some(setup_named(&args.next().ok_or("--hold SETUP")?)?),
            "--preload" => {
                o.preload = args.next().and_then(|v| v.parse().ok()).ok_or("--preload N")?;
                if o.preload > bench::MAX_PRELOAD {
                    return Err(format!("--preload {}: at most {}", o.preload, bench::MAX_PRELOAD));
                }
            }
            "-h" | "--help" => return Err("usage: overlay-bench [--quick] [--rounds N] [--secs S] [--json FILE] [--setups a,b] [--metrics a,b] [--hold SETUP] [--preload N]".into()),
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    Ok(o)
}

/// (metric, unit)
const METRICS: [(&str, &str); 8] = [
    ("tcp_1_stream", "Gbit/s"),
    ("tcp_4_streams", "Gbit/s"),
    ("udp_64b_pps", "kpps"),
    ("rr_p50", "µs"),
    ("rr_p99", "µs"),
    ("tcp_conn_per_s", "conn/s"),
    ("cpu_s_per_gb_at_4g", "CPU s/GB"),
    ("endpoint_add_to_first_packet", "ms"),
];

fn median(v: &mut [f64]) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let m = v.len() / 2;
    if v.len() % 2 == 1 { v[m] } else { (v[m - 1] + v[m]) / 2.0 }
}

fn main() -> ExitCode {
    let o = match parse() {
        Ok(o) => o,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::FAILURE;
        }
    };
    if let Err(e) = interrupt::install() {
        eprintln!("error: {e}");
        return ExitCode::FAILURE;
    }
    if let Some(setup) = o.hold {
        let t = bench::build(setup, o.preload);
        eprintln!(
            "bench: {} topology up: client netns {}, server netns {} ({}); Ctrl-C or `kill {}` tears it down",
            setup.name(),
            t.client.name(),
            t.server.name(),
            t.server_ip,
            std::process::id()
        );
        if let Some(d) = t.add_to_first_packet {
            eprintln!("bench: endpoint add → first packet: {:.1} ms", d.as_secs_f64() * 1e3);
        }
        interrupt::wait();
        drop(t);
        eprintln!("bench: torn down");
        return ExitCode::SUCCESS;
    }
    // A metric is measured if asked for and no Ctrl-C/SIGTERM has arrived.
    let wants = |m: &str| o.metrics.contains(&m) && !interrupt::requested();
    // samples[setup][metric] = values over rounds
    let mut samples: BTreeMap<&str, BTreeMap<&str, Vec<f64>>> = BTreeMap::new();
    for round in 1..=o.rounds {
        // Interleaved: every setup once per round, so drift hits all of them alike.
        for &setup in &o.setups {
            eprintln!("bench: round {round}/{}: {} — building the topology", o.rounds, setup.name());
            let t = bench::build(setup, o.preload);
            if let Some(p) = t.preloaded {
                eprintln!(
                    "bench: round {round}/{}: {} — {} endpoints preloaded (written in {:.1} s, both agents loaded them in {:.1} s)",
                    o.rounds,
                    setup.name(),
                    p.endpoints,
                    p.write.as_secs_f64(),
                    p.load.as_secs_f64()
                );
            }
            let s = samples.entry(setup.name()).or_default();
            let mut step = |name: &'static str, v: f64| {
                eprintln!("bench: round {round}/{}: {:<7} {name:<28} {v:.3}", o.rounds, setup.name());
                s.entry(name).or_default().push(v);
            };
            if let Some(d) = t.add_to_first_packet {
                step("endpoint_add_to_first_packet", d.as_secs_f64() * 1e3);
            }
            if wants("tcp_1_stream") {
                step("tcp_1_stream", bench::tcp_gbps(&t, 1, o.secs));
            }
            if wants("tcp_4_streams") {
                step("tcp_4_streams", bench::tcp_gbps(&t, 4, o.secs));
            }
            if wants("udp_64b_pps") {
                step("udp_64b_pps", bench::udp64_pps(&t, o.secs) / 1e3);
            }
            if wants("rr_p50") || wants("rr_p99") {
                let (p50, p99) = bench::rr_usec(&t, o.secs);
                step("rr_p50", p50);
                step("rr_p99", p99);
            }
            if wants("tcp_conn_per_s") {
                step("tcp_conn_per_s", bench::connections_per_sec(&t, o.secs));
            }
            if wants("cpu_s_per_gb_at_4g") {
                step("cpu_s_per_gb_at_4g", bench::cpu_sec_per_gb(&t, 4, o.secs));
            }
            drop(t);
            if interrupt::requested() {
                eprintln!("bench: interrupted; the topology is torn down, no results written");
                return ExitCode::FAILURE;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    // (median, min, max, samples) of one setup's metric, if it was measured.
    let summary = |setup: &str, metric: &str| {
        let values = samples.get(setup)?.get(metric).filter(|v| !v.is_empty())?;
        let mut sorted = values.clone();
        let med = median(&mut sorted);
        Some((med, sorted[0], sorted[sorted.len() - 1], values))
    };
    let med = |setup: &str, metric: &str| summary(setup, metric).map_or(f64::NAN, |s| s.0);
    // Ratios the targets are stated in, plus eBPF against direct routing at the
    // overlay's MTU (what is left once VXLAN's 50 bytes are accounted for).
    const RATIOS: [(&str, &str); 4] = [("ebpf", "direct"), ("ebpf", "kernel"), ("ebpf", "direct-1450"), ("ebpf-l3", "direct")];
    let setups: Vec<&str> = Setup::ALL.iter().map(|s| s.name()).collect();
    let mut header = format!("{:<34}", "metric");
    for s in &setups {
        header += &format!(" {s:>11}");
    }
    for (a, b) in RATIOS {
        header += &format!(" {:>17}", format!("{a}/{b}"));
    }
    if o.preload > 0 {
        println!(
            "\npreload: {} static remote endpoints in the ebpf setup's maps (network {}, VNI {}; the other setups are not preloaded)",
            o.preload,
            bench::PRELOAD.name,
            bench::PRELOAD.vni
        );
    }
    println!("\n{header}");
    let fmt = |x: f64| if x.is_nan() { "-".to_string() } else { format!("{x:.2}") };
    let mut json = serde_json::Map::new();
    for (metric, unit) in METRICS {
        let mut line = format!("{:<34}", format!("{metric} ({unit})"));
        let mut m = serde_json::Map::new();
        m.insert("unit".into(), unit.into());
        for setup in &setups {
            let Some((median, min, max, values)) = summary(setup, metric) else {
                line += &format!(" {:>11}", "-");
                continue;
            };
            line += &format!(" {:>11}", fmt(median));
            m.insert((*setup).into(), serde_json::json!({ "median": median, "min": min, "max": max, "samples": values }));
        }
        for (a, b) in RATIOS {
            let r = med(a, metric) / med(b, metric);
            line += &format!(" {:>17}", fmt(r));
            if r.is_finite() {
                m.insert(format!("{a}_vs_{b}"), serde_json::json!(r));
            }
        }
        println!("{line}");
        json.insert(metric.into(), m.into());
    }
    println!(
        "(medians of {} rounds, {} s per measurement; min..max per setup in the JSON)",
        o.rounds, o.secs
    );
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default().trim().to_string();
    let doc = serde_json::json!({
        "kernel": kernel,
        "cpus": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        "rounds": o.rounds,
        "seconds_per_measurement": o.secs,
        "preload": o.preload,
        "metrics": json,
    });
    if let Some(dir) = std::path::Path::new(&o.json).parent() {
        let _ = std::fs::create_dir_all(dir);
    }
    match std::fs::write(&o.json, serde_json::to_string_pretty(&doc).unwrap_or_default()) {
        Ok(()) => println!("\nresults written to {}", o.json),
        Err(e) => {
            eprintln!("writing {}: {e}", o.json);
            return ExitCode::FAILURE;
        }
    }
    ExitCode::SUCCESS
}
