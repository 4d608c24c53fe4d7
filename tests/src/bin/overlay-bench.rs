//! `cargo xtask bench`: eBPF overlay vs kernel VXLAN recipe vs direct routing, in
//! interleaved rounds, medians and ratios, a table and a JSON file.
//! Usage: overlay-bench [--quick] [--rounds N] [--secs S] [--json FILE]

use std::{collections::BTreeMap, process::ExitCode, time::Duration};

use integration_tests::bench::{self, Setup};

struct Opts {
    rounds: usize,
    secs: u32,
    json: String,
}

fn parse() -> Result<Opts, String> {
    let mut o = Opts { rounds: 3, secs: 5, json: "target/bench/results.json".into() };
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
            "-h" | "--help" => return Err("usage: overlay-bench [--quick] [--rounds N] [--secs S] [--json FILE]".into()),
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    Ok(o)
}

/// (metric, unit, higher is better)
const METRICS: [(&str, &str, bool); 8] = [
    ("tcp_1_stream", "Gbit/s", true),
    ("tcp_4_streams", "Gbit/s", true),
    ("udp_64b_pps", "kpps", true),
    ("rr_p50", "µs", false),
    ("rr_p99", "µs", false),
    ("tcp_conn_per_s", "conn/s", true),
    ("cpu_s_per_gb_at_4g", "CPU s/GB", false),
    ("endpoint_add_to_first_packet", "ms", false),
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
    // samples[setup][metric] = values over rounds
    let mut samples: BTreeMap<&str, BTreeMap<&str, Vec<f64>>> = BTreeMap::new();
    for round in 1..=o.rounds {
        // Interleaved: every setup once per round, so drift hits all of them alike.
        for setup in Setup::ALL {
            eprintln!("bench: round {round}/{}: {} — building the topology", o.rounds, setup.name());
            let t = bench::build(setup);
            let s = samples.entry(setup.name()).or_default();
            if let Some(d) = t.add_to_first_packet {
                s.entry("endpoint_add_to_first_packet").or_default().push(d.as_secs_f64() * 1e3);
            }
            let mut step = |name: &'static str, v: f64| {
                eprintln!("bench: round {round}/{}: {:<7} {name:<28} {v:.3}", o.rounds, setup.name());
                s.entry(name).or_default().push(v);
            };
            step("tcp_1_stream", bench::tcp_gbps(&t, 1, o.secs));
            step("tcp_4_streams", bench::tcp_gbps(&t, 4, o.secs));
            step("udp_64b_pps", bench::udp64_pps(&t, o.secs) / 1e3);
            let (p50, p99) = bench::rr_usec(&t, o.secs);
            step("rr_p50", p50);
            step("rr_p99", p99);
            step("tcp_conn_per_s", bench::connections_per_sec(&t, o.secs));
            step("cpu_s_per_gb_at_4g", bench::cpu_sec_per_gb(&t, 4, o.secs));
            drop(t);
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    let med = |setup: &str, metric: &str| -> f64 {
        let mut v = samples.get(setup).and_then(|m| m.get(metric)).cloned().unwrap_or_default();
        median(&mut v)
    };
    let spread = |setup: &str, metric: &str| -> (f64, f64) {
        let v = samples.get(setup).and_then(|m| m.get(metric)).cloned().unwrap_or_default();
        let min = v.iter().copied().fold(f64::INFINITY, f64::min);
        let max = v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        (min, max)
    };
    println!(
        "\n{:<30} {:>10} {:>10} {:>10} {:>12} {:>12}   (medians of {} rounds, {} s each; spread min..max in JSON)",
        "metric", "ebpf", "kernel", "direct", "ebpf/direct", "ebpf/kernel", o.rounds, o.secs
    );
    let mut json = serde_json::Map::new();
    for (metric, unit, _higher) in METRICS {
        let (e, k, d) = (med("ebpf", metric), med("kernel", metric), med("direct", metric));
        let fmt = |x: f64| if x.is_nan() { "-".to_string() } else { format!("{x:.2}") };
        println!(
            "{:<30} {:>10} {:>10} {:>10} {:>12} {:>12}",
            format!("{metric} ({unit})"),
            fmt(e),
            fmt(k),
            fmt(d),
            fmt(e / d),
            fmt(e / k)
        );
        let mut m = serde_json::Map::new();
        m.insert("unit".into(), unit.into());
        for setup in ["ebpf", "kernel", "direct"] {
            let (lo, hi) = spread(setup, metric);
            let values = samples.get(setup).and_then(|x| x.get(metric)).cloned().unwrap_or_default();
            m.insert(
                setup.into(),
                serde_json::json!({ "median": med(setup, metric), "min": lo, "max": hi, "samples": values }),
            );
        }
        m.insert("ebpf_vs_direct".into(), serde_json::json!(e / d));
        m.insert("ebpf_vs_kernel".into(), serde_json::json!(e / k));
        json.insert(metric.into(), m.into());
    }
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default().trim().to_string();
    let doc = serde_json::json!({
        "kernel": kernel,
        "cpus": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        "rounds": o.rounds,
        "seconds_per_measurement": o.secs,
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
