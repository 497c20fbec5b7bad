//! `bridge` includes the `tests/common` harness by `#[path]` until it moves
//! to the test kit. That harness names the daemon binary with
//! `env!("CARGO_BIN_EXE_sensorgate")`, which Cargo sets only for the
//! `sensorgate` package's own tests and benches, so this sets it here: the
//! binary of the same profile. bridge never starts it (its daemon runs
//! in-process); the variable only has to exist for the include to compile.

use std::path::PathBuf;

fn main() {
    let out = PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    // OUT_DIR is target/<profile>/build/<package>-<hash>/out.
    let profile_dir = out.ancestors().nth(3).unwrap_or(&out);
    println!(
        "cargo:rustc-env=CARGO_BIN_EXE_sensorgate={}",
        profile_dir.join("sensorgate").display()
    );
    println!("cargo:rerun-if-changed=build.rs");
}
