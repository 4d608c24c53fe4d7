//! Builds the eBPF object with aya-build and Debian's rustc (the rustup toolchains here
//! have no `rust-src`, which `-Z build-std=core` needs). `AYA_BUILD_SKIP=1` skips it
//! (for `cargo check`/clippy without the eBPF toolchain).
use anyhow::{Context as _, anyhow};
use aya_build::{Package, Toolchain};

/// Where `apt-get install rustc-web cargo-web rust-web-src` puts the compiler.
const EBPF_TOOLCHAIN: &str = "/usr";

fn main() -> anyhow::Result<()> {
    println!("cargo:rerun-if-env-changed=OVERLAY_EBPF_TOOLCHAIN");
    let toolchain = std::env::var("OVERLAY_EBPF_TOOLCHAIN").unwrap_or_else(|_| EBPF_TOOLCHAIN.into());
    let skip = std::env::var("AYA_BUILD_SKIP").is_ok_and(|v| v == "1" || v.eq_ignore_ascii_case("true"));
    if !skip {
        let rustc = std::path::Path::new(&toolchain).join("bin/rustc");
        if !rustc.exists() {
            return Err(anyhow!(
                "{} not found: the eBPF crate needs Debian's rustc with library sources; \
                 run `cargo xtask setup` (or apt-get install rustc-web cargo-web rust-web-src llvm-22-dev), \
                 or set AYA_BUILD_SKIP=1 to build without the datapath",
                rustc.display()
            ));
        }
    }
    // aya-build uses `-Z build-std=core` only when RUSTC_BOOTSTRAP is set; Debian's
    // rustc is a stable compiler. SAFETY: build scripts are single-threaded here.
    unsafe { std::env::set_var("RUSTC_BOOTSTRAP", "1") };
    let meta = cargo_metadata_root()?;
    // The agent's test-only `upgrade-test-variant` feature (see Cargo.toml) builds the
    // programs of the same name; cargo gives each feature set its own OUT_DIR.
    let variant = std::env::var_os("CARGO_FEATURE_UPGRADE_TEST_VARIANT").is_some();
    let ebpf = Package {
        name: "overlay-ebpf",
        root_dir: &meta,
        features: if variant { &["upgrade-test-variant"] } else { &[] },
        ..Default::default()
    };
    aya_build::build_ebpf([ebpf], Toolchain::Custom(&toolchain)).context("building overlay-ebpf")?;
    if skip {
        // An empty object: the agent compiles (for clippy, docs, the netlink tests) and
        // refuses to start the eBPF datapath with a clear error.
        let out = std::path::PathBuf::from(std::env::var("OUT_DIR").context("OUT_DIR")?).join("overlay-ebpf");
        std::fs::write(&out, b"").with_context(|| format!("writing {}", out.display()))?;
    }
    Ok(())
}

fn cargo_metadata_root() -> anyhow::Result<String> {
    let manifest_dir = std::env::var("CARGO_MANIFEST_DIR").context("CARGO_MANIFEST_DIR")?;
    let root = std::path::Path::new(&manifest_dir)
        .parent()
        .context("agent crate has no parent directory")?
        .join("overlay-ebpf");
    Ok(root.to_string_lossy().into_owned())
}
