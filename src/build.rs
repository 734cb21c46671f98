//! Build script (`build = "src/build.rs"` in Cargo.toml): how the executable is linked on
//! Linux, for a fast start of every `token` call (README, Performance). Both choices are what
//! Go does for `gh` and git-credential-oauth:
//! - at a fixed address, not as a PIE: the loader has no relocations of its own to apply and
//!   no copy-on-write pages to fault in first. Libraries, heap and stack are still placed at
//!   random.
//! - on glibc, with the unwinder of `libgcc_eh.a` linked in (what `gcc -static-libgcc` does)
//!   rather than `libgcc_s.so.1` loaded at every start: one shared library fewer to find, map,
//!   relocate and initialise. The unwinder only prints backtraces here (`panic = "abort"`),
//!   and nothing unwinds across a library. Left out when the C compiler has no `libgcc_eh.a`.
//!
//! `QWEN_CRED_PIE=1 cargo build` links as rustc does by default (a PIE with libgcc_s).

use std::path::Path;
use std::process::Command;

fn main() {
    println!("cargo::rerun-if-changed=src/build.rs");
    println!("cargo::rerun-if-env-changed=QWEN_CRED_PIE");
    let target = |key: &str| std::env::var(key).unwrap_or_default();
    if target("CARGO_CFG_TARGET_OS") != "linux" || std::env::var_os("QWEN_CRED_PIE").is_some() {
        return;
    }
    println!("cargo::rustc-link-arg-bins=-no-pie");
    if target("CARGO_CFG_TARGET_ENV") == "gnu" && has_static_unwinder() {
        // Named before std's `-lgcc_s`, so the linker takes the unwinder from here and
        // `--as-needed` then drops libgcc_s.
        println!("cargo::rustc-link-lib=static:-bundle=gcc_eh");
    }
}

/// Whether the C compiler that links the executable has `libgcc_eh.a` (GCC's does; a bare
/// clang may not): it prints the file's full path, or the bare name when it has none.
fn has_static_unwinder() -> bool {
    let cc = std::env::var("RUSTC_LINKER").unwrap_or_else(|_| "cc".into());
    Command::new(cc)
        .arg("-print-file-name=libgcc_eh.a")
        .output()
        .ok()
        .filter(|out| out.status.success())
        .and_then(|out| String::from_utf8(out.stdout).ok())
        .is_some_and(|path| {
            Path::new(path.trim()).is_absolute() && Path::new(path.trim()).is_file()
        })
}
