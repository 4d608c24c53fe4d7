//! Debian's packaged kernels for the VM matrix: resolved from each suite's
//! `linux-image-amd64` through a private apt configuration (the system's sources, lists,
//! caches and dpkg status are never read or written), fetched with `apt-get download`,
//! extracted with `dpkg-deb -x` and depmod'ed, cached per package version.
use std::{
    collections::BTreeSet,
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result, bail};

use crate::exec;

/// The kernels of the matrix, oldest first.
pub const KERNELS: [KernelDef; 4] = [
    KernelDef { key: "5.10", suite: "bullseye" },
    KernelDef { key: "6.1", suite: "bookworm" },
    KernelDef { key: "6.12", suite: "trixie" },
    // Whatever is newest there (7.3 on 2026-11-25): resolved at run time.
    KernelDef { key: "backports", suite: "trixie-backports" },
];

/// The generic image metapackage; its `-amd64` kernels share the root over 9p (the
/// `-cloud-` flavour lacks 9p).
const METAPACKAGE: &str = "linux-image-amd64";
/// Used when the system's sources name no keyring (bookworm's has bullseye's to trixie's keys).
const DEBIAN_KEYRING: &str = "/usr/share/keyrings/debian-archive-keyring.gpg";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KernelDef {
    /// What `--kernel` calls it.
    pub key: &'static str,
    pub suite: &'static str,
}

/// What `--kernel` asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Wanted {
    Def(KernelDef),
    /// A version like `7.3`, to be matched against the newest backports kernel.
    BackportsVersion(String),
}

/// Parses `--kernel` values: `5.10`, `6.1`, `6.12`, `backports` (also `newest`, `latest`,
/// a suite name, or the backports kernel's version such as `7.3`), `oldest`, `all`.
/// Order follows [`KERNELS`]; duplicates are dropped.
pub fn parse_selection(values: &[String]) -> Result<Vec<Wanted>> {
    let mut wanted: Vec<Wanted> = Vec::new();
    let mut push = |w: Wanted| {
        if !wanted.contains(&w) {
            wanted.push(w);
        }
    };
    let newest = KERNELS[KERNELS.len() - 1];
    for value in values.iter().flat_map(|v| v.split(',')).map(str::trim).filter(|v| !v.is_empty()) {
        match value {
            "all" => KERNELS.iter().for_each(|k| push(Wanted::Def(*k))),
            "oldest" => push(Wanted::Def(KERNELS[0])),
            "newest" | "latest" => push(Wanted::Def(newest)),
            other => {
                if let Some(k) = KERNELS.iter().find(|k| k.key == other || k.suite == other) {
                    push(Wanted::Def(*k));
                } else if other.split('.').all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit())) {
                    push(Wanted::BackportsVersion(other.to_owned()));
                } else {
                    bail!(
                        "unknown kernel {other:?}: use 5.10, 6.1, 6.12, backports (the newest in \
                         trixie-backports, or its version), oldest, newest or all"
                    );
                }
            }
        }
    }
    if wanted.is_empty() {
        bail!("--kernel names no kernel");
    }
    let rank = |w: &Wanted| match w {
        Wanted::Def(k) => KERNELS.iter().position(|d| d == k).unwrap_or(KERNELS.len()),
        Wanted::BackportsVersion(_) => KERNELS.len() - 1,
    };
    wanted.sort_by_key(rank);
    Ok(wanted)
}

/// A kernel ready to boot.
#[derive(Debug, Clone)]
pub struct Kernel {
    pub def: KernelDef,
    /// `uname -r`, e.g. `5.10.0-32-amd64`.
    pub release: String,
    /// The Debian package version, e.g. `5.10.223-1`.
    pub package_version: String,
    pub packages: Vec<String>,
    pub vmlinuz: PathBuf,
}

/// The Debian archive the system's apt sources use (the entry for the system's own
/// release), and the keyring they name for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mirror {
    pub uri: String,
    pub signed_by: Option<String>,
}

/// Finds the mirror in `/etc/apt/sources.list` and `/etc/apt/sources.list.d/*.{list,sources}`.
pub fn system_mirror() -> Result<Mirror> {
    let os_release = fs::read_to_string("/etc/os-release").unwrap_or_default();
    let codename = os_release
        .lines()
        .find_map(|l| l.strip_prefix("VERSION_CODENAME="))
        .map(|c| c.trim_matches('"').to_owned())
        .context("/etc/os-release has no VERSION_CODENAME: pass --mirror")?;
    let mut files = vec![PathBuf::from("/etc/apt/sources.list")];
    if let Ok(entries) = fs::read_dir("/etc/apt/sources.list.d") {
        let mut more: Vec<PathBuf> = entries
            .filter_map(|e| Some(e.ok()?.path()))
            .filter(|p| p.extension().is_some_and(|e| e == "list" || e == "sources"))
            .collect();
        more.sort();
        files.extend(more);
    }
    for file in &files {
        let Ok(text) = fs::read_to_string(file) else { continue };
        let entries = if file.extension().is_some_and(|e| e == "sources") {
            parse_deb822(&text)
        } else {
            parse_one_line(&text)
        };
        if let Some(m) = entries.into_iter().find(|e| e.suites.iter().any(|s| *s == codename)) {
            return Ok(Mirror { uri: m.uri, signed_by: m.signed_by });
        }
    }
    bail!(
        "no apt source for Debian {codename} in {}: pass --mirror URL (a Debian archive)",
        files.iter().map(|f| f.display().to_string()).collect::<Vec<_>>().join(", ")
    )
}

#[derive(Debug, PartialEq, Eq)]
struct SourceEntry {
    uri: String,
    suites: Vec<String>,
    signed_by: Option<String>,
}

/// `deb [signed-by=K arch=…] URI SUITE COMPONENT…` lines.
fn parse_one_line(text: &str) -> Vec<SourceEntry> {
    let mut out = Vec::new();
    for line in text.lines() {
        let line = line.split('#').next().unwrap_or("").trim();
        let Some(rest) = line.strip_prefix("deb ") else { continue };
        let mut rest = rest.trim_start();
        let mut signed_by = None;
        if let Some(opts) = rest.strip_prefix('[') {
            let Some((opts, after)) = opts.split_once(']') else { continue };
            signed_by = opts
                .split_whitespace()
                .find_map(|o| o.strip_prefix("signed-by=").or_else(|| o.strip_prefix("Signed-By=")))
                .map(str::to_owned);
            rest = after.trim_start();
        }
        let mut words = rest.split_whitespace();
        let (Some(uri), Some(suite)) = (words.next(), words.next()) else { continue };
        out.push(SourceEntry { uri: uri.to_owned(), suites: vec![suite.to_owned()], signed_by });
    }
    out
}

/// deb822 `.sources` stanzas (`Types`, `URIs`, `Suites`, `Signed-By`, `Enabled`).
fn parse_deb822(text: &str) -> Vec<SourceEntry> {
    let mut out = Vec::new();
    let text = text.lines().filter(|l| !l.trim_start().starts_with('#')).collect::<Vec<_>>().join("\n");
    for stanza in text.split("\n\n") {
        let field = |name: &str| {
            stanza.lines().find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.trim().eq_ignore_ascii_case(name).then(|| v.trim().to_owned())
            })
        };
        let types = field("Types").unwrap_or_default();
        if !types.split_whitespace().any(|t| t == "deb") || field("Enabled").is_some_and(|e| e == "no") {
            continue;
        }
        let suites: Vec<String> = field("Suites").unwrap_or_default().split_whitespace().map(str::to_owned).collect();
        // An inline (multi-line) key is not a path: let apt use its trusted keys then.
        let signed_by = field("Signed-By").filter(|k| k.starts_with('/'));
        for uri in field("URIs").unwrap_or_default().split_whitespace() {
            out.push(SourceEntry { uri: uri.to_owned(), suites: suites.clone(), signed_by: signed_by.clone() });
        }
    }
    out
}

/// Private apt state for one suite under `dir`: sources list, lists, caches and an empty
/// dpkg status (so what the host has installed never changes the candidate).
struct Apt {
    dir: PathBuf,
}

impl Apt {
    fn new(dir: PathBuf, mirror: &Mirror, suite: &str) -> Result<Apt> {
        for sub in ["lists/partial", "cache/archives/partial"] {
            fs::create_dir_all(dir.join(sub)).with_context(|| format!("creating {}", dir.join(sub).display()))?;
        }
        let keyring = mirror.signed_by.clone().unwrap_or_else(|| DEBIAN_KEYRING.to_owned());
        let line = format!("deb [signed-by={keyring}] {} {suite} main\n", mirror.uri);
        fs::write(dir.join("sources.list"), line).context("writing the private sources.list")?;
        if !dir.join("status").exists() {
            fs::write(dir.join("status"), "").context("writing the private dpkg status")?;
        }
        Ok(Apt { dir })
    }

    fn options(&self) -> Vec<String> {
        let d = |p: &str| self.dir.join(p).display().to_string();
        vec![
            "-o".into(),
            format!("Dir::Etc::sourcelist={}", d("sources.list")),
            "-o".into(),
            "Dir::Etc::sourceparts=-".into(),
            "-o".into(),
            format!("Dir::State::Lists={}", d("lists")),
            "-o".into(),
            format!("Dir::State::status={}", d("status")),
            "-o".into(),
            format!("Dir::Cache={}", d("cache")),
            // Downloads land in directories `_apt` cannot write to.
            "-o".into(),
            "APT::Sandbox::User=root".into(),
        ]
    }

    fn update(&self) -> Result<()> {
        exec::exec(Command::new("apt-get").args(self.options()).args(["-q", "update"]))
    }

    /// `(version, dependency names)` of `package`'s candidate.
    fn show(&self, package: &str) -> Result<(String, Vec<String>)> {
        let text = exec::stdout(Command::new("apt-cache").args(self.options()).args(["show", "--no-all-versions", package]))?;
        parse_control(&text).with_context(|| format!("reading `apt-cache show {package}`"))
    }

    fn download(&self, packages: &[String], into: &Path) -> Result<()> {
        exec::exec(Command::new("apt-get").args(self.options()).args(["-q", "download"]).args(packages).current_dir(into))
    }
}

/// Version and every package name in `Depends`/`Pre-Depends` (all alternatives) of one
/// control stanza.
fn parse_control(text: &str) -> Result<(String, Vec<String>)> {
    let stanza = text.split("\n\n").next().unwrap_or("");
    let field = |name: &str| stanza.lines().find_map(|l| l.strip_prefix(name)?.strip_prefix(':')).map(str::trim);
    let version = field("Version").context("no Version field")?.to_owned();
    let names = ["Depends", "Pre-Depends"]
        .iter()
        .filter_map(|f| field(f))
        .flat_map(|deps| deps.split([',', '|']))
        .filter_map(|d| d.split_whitespace().next())
        .map(|n| n.split(':').next().unwrap_or(n).to_owned())
        .collect();
    Ok((version, names))
}

/// The image package `linux-image-amd64` points at (`linux-image-<release>`).
fn image_of(meta_deps: &[String]) -> Option<&str> {
    meta_deps
        .iter()
        .map(String::as_str)
        .find(|d| d.starts_with("linux-image-") && *d != METAPACKAGE && !d.contains("-cloud-") && !d.contains("-rt-"))
}

/// Makes `def`'s kernel ready under `cache` (downloading it unless that version is
/// there already) and returns it. `cache` holds `apt/<suite>/` and `<suite>/<version>/`.
pub fn prepare(cache: &Path, mirror: &Mirror, def: KernelDef) -> Result<Kernel> {
    let apt = Apt::new(cache.join("apt").join(def.suite), mirror, def.suite)?;
    eprintln!("xtask: kernel {} ({}): updating the package list from {}", def.key, def.suite, mirror.uri);
    if let Err(err) = apt.update() {
        // Offline: the newest kernel already cached for this suite will do.
        if let Some(kernel) = newest_cached(cache, def)? {
            eprintln!(
                "xtask: kernel {} ({}): apt-get update failed ({err:#}); using the cached {}",
                def.key, def.suite, kernel.release
            );
            return Ok(kernel);
        }
        return Err(err.context(format!("updating the {} package list (nothing cached)", def.suite)));
    }
    let (_, meta_deps) = apt.show(METAPACKAGE)?;
    let image = image_of(&meta_deps)
        .with_context(|| format!("{METAPACKAGE} in {} depends on no linux-image-* package: {meta_deps:?}", def.suite))?
        .to_owned();
    let release = image.trim_start_matches("linux-image-").to_owned();
    // Newer kernels split the image into linux-binary-*, linux-modules-* and linux-base-*
    // packages (all named after the release): follow those dependencies.
    let suffix = format!("-{release}");
    let mut packages: BTreeSet<String> = BTreeSet::new();
    let mut queue = vec![image.clone()];
    let mut version = String::new();
    while let Some(package) = queue.pop() {
        if !packages.insert(package.clone()) {
            continue;
        }
        let (v, deps) = apt.show(&package)?;
        if package == image {
            version = v;
        }
        queue.extend(deps.into_iter().filter(|d| d.starts_with("linux-") && d.ends_with(&suffix) && !packages.contains(d)));
    }
    let packages: Vec<String> = packages.into_iter().collect();
    let dir = cache.join(def.suite).join(format!("{release}_{version}"));
    let marker = dir.join(".complete");
    if marker.is_file() {
        let kernel = load_cached(&dir, def)?;
        eprintln!("xtask: kernel {} ({}): {release} {version} cached in {}", def.key, def.suite, dir.display());
        return Ok(kernel);
    }
    eprintln!(
        "xtask: kernel {} ({}): downloading {release} {version}: {}",
        def.key,
        def.suite,
        packages.join(" ")
    );
    if dir.exists() {
        fs::remove_dir_all(&dir).with_context(|| format!("removing the partial {}", dir.display()))?;
    }
    let debs = dir.join("debs");
    let tree = dir.join("tree");
    fs::create_dir_all(&debs).with_context(|| format!("creating {}", debs.display()))?;
    fs::create_dir_all(&tree).with_context(|| format!("creating {}", tree.display()))?;
    apt.download(&packages, &debs)?;
    let mut files: Vec<PathBuf> = fs::read_dir(&debs)
        .with_context(|| format!("listing {}", debs.display()))?
        .filter_map(|e| Some(e.ok()?.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "deb"))
        .collect();
    files.sort();
    for deb in &files {
        exec::exec(Command::new("dpkg-deb").arg("-x").arg(deb).arg(&tree))?;
    }
    // Modules are in lib/modules/<release> (5.10, 6.1) or usr/lib/modules/<release> (trixie).
    let base = module_base(&tree, &release)
        .with_context(|| format!("no lib/modules/{release} or usr/lib/modules/{release} in {}", tree.display()))?;
    exec::exec(Command::new("depmod").args(["-a", "-b"]).arg(&base).arg(&release))?;
    vmlinuz_in(&tree, &release).with_context(|| format!("no vmlinuz for {release} in {}", tree.display()))?;
    fs::write(&marker, format!("{release}\n{version}\n{}\n", packages.join(" ")))
        .with_context(|| format!("writing {}", marker.display()))?;
    // Older downloads of this suite are superseded.
    for entry in fs::read_dir(cache.join(def.suite)).into_iter().flatten().flatten() {
        if entry.path() != dir {
            eprintln!("xtask: removing the superseded {}", entry.path().display());
            fs::remove_dir_all(entry.path()).with_context(|| format!("removing {}", entry.path().display()))?;
        }
    }
    let kernel = load_cached(&dir, def)?;
    eprintln!("xtask: kernel {} ({}): {release} ready", def.key, def.suite);
    Ok(kernel)
}

fn module_base(tree: &Path, release: &str) -> Option<PathBuf> {
    [tree.to_path_buf(), tree.join("usr")].into_iter().find(|b| b.join("lib/modules").join(release).is_dir())
}

fn vmlinuz_in(tree: &Path, release: &str) -> Option<PathBuf> {
    [tree.join(format!("boot/vmlinuz-{release}")), tree.join(format!("usr/lib/modules/{release}/vmlinuz"))]
        .into_iter()
        .find(|p| p.is_file())
}

/// A completely extracted kernel directory (`.complete` says release, version, packages).
fn load_cached(dir: &Path, def: KernelDef) -> Result<Kernel> {
    let marker = fs::read_to_string(dir.join(".complete")).with_context(|| format!("reading {}/.complete", dir.display()))?;
    let mut lines = marker.lines();
    let (Some(release), Some(version)) = (lines.next(), lines.next()) else {
        bail!("{}/.complete is malformed", dir.display());
    };
    let packages = lines.next().unwrap_or("").split_whitespace().map(str::to_owned).collect();
    let vmlinuz = vmlinuz_in(&dir.join("tree"), release).with_context(|| format!("no vmlinuz in {}", dir.display()))?;
    Ok(Kernel { def, release: release.to_owned(), package_version: version.to_owned(), packages, vmlinuz })
}

fn newest_cached(cache: &Path, def: KernelDef) -> Result<Option<Kernel>> {
    let mut complete: Vec<(std::time::SystemTime, PathBuf)> = fs::read_dir(cache.join(def.suite))
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let marker = e.path().join(".complete");
            Some((marker.metadata().ok()?.modified().ok()?, e.path()))
        })
        .collect();
    complete.sort();
    complete.pop().map(|(_, dir)| load_cached(&dir, def)).transpose()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn selection() {
        let keys = |w: Vec<Wanted>| -> Vec<String> {
            w.into_iter()
                .map(|w| match w {
                    Wanted::Def(k) => k.key.to_owned(),
                    Wanted::BackportsVersion(v) => format!("v{v}"),
                })
                .collect()
        };
        assert_eq!(keys(parse_selection(&strings(&["all"])).unwrap()), ["5.10", "6.1", "6.12", "backports"]);
        assert_eq!(keys(parse_selection(&strings(&["newest,oldest"])).unwrap()), ["5.10", "backports"]);
        assert_eq!(keys(parse_selection(&strings(&["6.12", "bullseye", "6.12"])).unwrap()), ["5.10", "6.12"]);
        assert_eq!(keys(parse_selection(&strings(&["7.3"])).unwrap()), ["v7.3"]);
        assert!(parse_selection(&strings(&["5.4x"])).is_err());
        assert!(parse_selection(&strings(&[""])).is_err());
    }

    #[test]
    fn sources_one_line_and_deb822() {
        let list = "# comment\ndeb [arch=amd64 signed-by=/k.gpg] http://m/debian bookworm main\n\
                    deb-src http://m/debian bookworm main\ndeb http://s/debian-security bookworm-security main\n";
        assert_eq!(
            parse_one_line(list),
            [
                SourceEntry { uri: "http://m/debian".into(), suites: strings(&["bookworm"]), signed_by: Some("/k.gpg".into()) },
                SourceEntry { uri: "http://s/debian-security".into(), suites: strings(&["bookworm-security"]), signed_by: None },
            ]
        );
        let sources = "Types: deb\n# http://snapshot\nURIs: http://deb.debian.org/debian\nSuites: bookworm bookworm-updates\n\
                       Components: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n\n\
                       Types: deb\nURIs: http://deb.debian.org/debian-security\nSuites: bookworm-security\nComponents: main\n";
        let entries = parse_deb822(sources);
        assert_eq!(entries.len(), 2);
        assert_eq!(entries[0].uri, "http://deb.debian.org/debian");
        assert_eq!(entries[0].suites, strings(&["bookworm", "bookworm-updates"]));
        assert_eq!(entries[0].signed_by.as_deref(), Some("/usr/share/keyrings/debian-archive-keyring.gpg"));
        assert!(parse_deb822("Types: deb-src\nURIs: http://x\nSuites: bookworm\n").is_empty());
        assert!(parse_deb822("Enabled: no\nTypes: deb\nURIs: http://x\nSuites: bookworm\n").is_empty());
    }

    #[test]
    fn control_and_image() {
        let meta = "Package: linux-image-amd64\nVersion: 7.3.4-1~bpo13+1\nDepends: linux-base-amd64 (= 7.3.4-1~bpo13+1), \
                    linux-image-7.3.4+deb13-amd64 (= 7.3.4-1~bpo13+1), linux-modules-amd64 (= 7.3.4-1~bpo13+1)\n\n";
        let (version, deps) = parse_control(meta).unwrap();
        assert_eq!(version, "7.3.4-1~bpo13+1");
        assert_eq!(image_of(&deps), Some("linux-image-7.3.4+deb13-amd64"));
        let image = "Package: linux-image-7.3.4+deb13-amd64\nVersion: 7.3.4-1~bpo13+1\nDepends: dracut | initramfs-tools (>= 0.120+deb8u2) | \
                     linux-initramfs-tool, linux-binary-7.3.4+deb13-amd64 (= 7.3.4-1~bpo13+1)\nPre-Depends: linux-base (>= 4.17~)\n";
        let (_, deps) = parse_control(image).unwrap();
        assert_eq!(
            deps,
            strings(&["dracut", "initramfs-tools", "linux-initramfs-tool", "linux-binary-7.3.4+deb13-amd64", "linux-base"])
        );
        let old = "Package: linux-image-amd64\nVersion: 5.10.223-1\nDepends: linux-image-5.10.0-32-amd64 (= 5.10.223-1)\n";
        assert_eq!(image_of(&parse_control(old).unwrap().1), Some("linux-image-5.10.0-32-amd64"));
        assert!(parse_control("Package: x\n").is_err());
    }
}
