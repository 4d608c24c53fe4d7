//! Running external commands: every failure names the full command line and its exit status.
use std::{
    ffi::OsStr,
    os::unix::{ffi::OsStrExt as _, process::CommandExt as _},
    process::{Command, Output},
};

use anyhow::{Context as _, Result, bail};

/// Runs `cmd` with inherited stdin/stdout/stderr (so its output streams through), after
/// printing its command line on stderr. Fails unless it exits with status 0.
pub fn exec(cmd: &mut Command) -> Result<()> {
    let line = command_line(cmd);
    eprintln!("xtask: running: {line}");
    let status = cmd
        .status()
        .with_context(|| format!("failed to start `{line}`"))?;
    if !status.success() {
        bail!("`{line}` failed: {status}");
    }
    Ok(())
}

/// Runs `cmd` with captured output and returns it whatever the exit status; for probes
/// (`dpkg-query`, `--version`) whose failure means "not there" rather than an error.
pub fn probe(cmd: &mut Command) -> Result<Output> {
    cmd.output()
        .with_context(|| format!("failed to start `{}`", command_line(cmd)))
}

/// Runs `cmd` with captured output and returns its stdout; fails (with its stderr) unless it
/// exits with status 0.
pub fn stdout(cmd: &mut Command) -> Result<String> {
    let line = command_line(cmd);
    let output = cmd
        .output()
        .with_context(|| format!("failed to start `{line}`"))?;
    if !output.status.success() {
        bail!(
            "`{line}` failed: {}: {}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    String::from_utf8(output.stdout).with_context(|| format!("`{line}` printed non-UTF-8 output"))
}

/// Replaces this process with `cmd` (signals and the exit status go straight to it); returns
/// only if the exec itself failed.
pub fn exec_replace(cmd: &mut Command) -> anyhow::Error {
    let line = command_line(cmd);
    eprintln!("xtask: running: {line}");
    let err = cmd.exec();
    anyhow::Error::new(err).context(format!("failed to exec `{line}`"))
}

/// The command as a shell line: `KEY=value` for each variable set on it, then the program and
/// its arguments, quoted where needed.
pub fn command_line(cmd: &Command) -> String {
    let inherited_path = std::env::var_os("PATH").unwrap_or_default();
    let env = cmd.get_envs().filter_map(|(key, value)| {
        let value = value?;
        let mut assignment = key.to_os_string();
        assignment.push("=");
        let prefix = value.as_bytes().strip_suffix(inherited_path.as_bytes());
        Some(match prefix {
            // `PATH=<dirs>:$PATH` rather than the whole inherited PATH.
            Some(prefix)
                if key == "PATH" && !inherited_path.is_empty() && prefix.ends_with(b":") =>
            {
                assignment.push(OsStr::from_bytes(prefix));
                format!("{}$PATH", quote(&assignment))
            }
            _ => {
                assignment.push(value);
                quote(&assignment)
            }
        })
    });
    let words: Vec<String> = env
        .chain(std::iter::once(quote(cmd.get_program())))
        .chain(cmd.get_args().map(quote))
        .collect();
    words.join(" ")
}

fn quote(word: &OsStr) -> String {
    let word = word.to_string_lossy();
    let plain = !word.is_empty()
        && word
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./=:,+@%^".contains(c));
    if plain {
        word.into_owned()
    } else {
        format!("'{}'", word.replace('\'', r"'\''"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_line_shows_env_program_and_quoted_args() {
        let mut cmd = Command::new("apt-get");
        cmd.env("DEBIAN_FRONTEND", "noninteractive").args([
            "install",
            "-y",
            "a b",
            "it's",
            "${Status}",
        ]);
        assert_eq!(
            command_line(&cmd),
            r"DEBIAN_FRONTEND=noninteractive apt-get install -y 'a b' 'it'\''s' '${Status}'"
        );
    }

    #[test]
    fn command_line_abbreviates_inherited_path() {
        let path = std::env::var_os("PATH").unwrap();
        let mut prefixed = std::ffi::OsString::from("/opt/llvm/bin:");
        prefixed.push(&path);
        let mut cmd = Command::new("true");
        cmd.env("PATH", &prefixed);
        assert_eq!(command_line(&cmd), "PATH=/opt/llvm/bin:$PATH true");
    }

    #[test]
    fn exec_failure_names_command_and_status() {
        let err = exec(Command::new("sh").args(["-c", "exit 3"])).unwrap_err();
        assert_eq!(err.to_string(), "`sh -c 'exit 3'` failed: exit status: 3");
    }

    #[test]
    fn stdout_returns_output_and_reports_stderr() {
        assert_eq!(stdout(Command::new("echo").arg("hi")).unwrap(), "hi\n");
        let err = stdout(Command::new("sh").args(["-c", "echo oops >&2; exit 1"])).unwrap_err();
        assert_eq!(
            err.to_string(),
            "`sh -c 'echo oops >&2; exit 1'` failed: exit status: 1: oops"
        );
    }
}
