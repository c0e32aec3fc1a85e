//! Running short-lived tools (`ip`, `nft`, `sysctl`) and turning their failures into errors that
//! show the whole command line and its stderr.

use std::{
    io::Write as _,
    process::{Command, Stdio},
};

use anyhow::{Context as _, bail};

/// `program arg1 arg2 ...`, for error messages.
pub(crate) fn display(cmd: &Command) -> String {
    let mut line = cmd.get_program().to_string_lossy().into_owned();
    for arg in cmd.get_args() {
        line.push(' ');
        line.push_str(&arg.to_string_lossy());
    }
    line
}

/// Runs `cmd` to completion and returns its stdout.
pub(crate) fn output(cmd: &mut Command) -> anyhow::Result<String> {
    output_with_stdin(cmd, None)
}

/// Runs `cmd` with `stdin` written to its standard input, and returns its stdout.
pub(crate) fn output_with_stdin(cmd: &mut Command, stdin: Option<&str>) -> anyhow::Result<String> {
    let line = display(cmd);
    cmd.stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd
        .spawn()
        .with_context(|| format!("cannot run `{line}` (is it installed and on PATH?)"))?;
    if let (Some(text), Some(mut pipe)) = (stdin, child.stdin.take()) {
        pipe.write_all(text.as_bytes())
            .with_context(|| format!("cannot write stdin of `{line}`"))?;
    }
    let out = child
        .wait_with_output()
        .with_context(|| format!("cannot wait for `{line}`"))?;
    if !out.status.success() {
        bail!(
            "`{line}` failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Runs `ip ARGS...` (a shorthand for the many setup steps).
pub(crate) fn ip(args: &[&str]) -> anyhow::Result<String> {
    output(Command::new("ip").args(args))
}
