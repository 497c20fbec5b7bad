//! Man pages and shell completions generated from a binary's clap
//! definition, so the packaged documentation can never drift from the
//! options the binary really takes. Both binaries (`sensorgate`,
//! `device-sim`) expose this through a hidden option that the packaging
//! script (`packaging/build-deb`) calls; nothing here runs in the daemon.
//!
//! A crate of its own, not part of the wire crate: it has nothing to do
//! with the protocol, and device-sim needs it without the daemon.

use std::path::Path;

use clap_complete::Shell;

/// Writes, under `dir`: `man/<name>[-<subcommand>].1` (one page per visible
/// subcommand), `bash/<name>` and `zsh/_<name>`, named as Debian installs
/// them (`/usr/share/bash-completion/completions/`,
/// `/usr/share/zsh/vendor-completions/`).
pub fn write(mut cmd: clap::Command, dir: &Path) -> std::io::Result<()> {
    let name = cmd.get_name().to_string();
    let man = dir.join("man");
    std::fs::create_dir_all(&man)?;
    clap_mangen::generate_to(cmd.clone(), &man)?;
    for (shell, sub, file) in [
        (Shell::Bash, "bash", name.clone()),
        (Shell::Zsh, "zsh", format!("_{name}")),
    ] {
        let out = dir.join(sub);
        std::fs::create_dir_all(&out)?;
        let mut buf = Vec::new();
        clap_complete::generate(shell, &mut cmd, &name, &mut buf);
        std::fs::write(out.join(file), buf)?;
    }
    Ok(())
}
