//! Builds PID 1 of evum's busybox image (`priv/guest/evum-init.c`, with
//! the command loop of `priv/guest/evum-ctl.c`) as a static executable, since the guest has no C library of its own. musl
//! keeps it at tens of kilobytes, where glibc's static archive makes it
//! 800 KB: every byte of the image is copied into each guest's memory. The
//! image builder embeds it, so the NIF carries everything a busybox guest
//! needs besides the host's busybox.

use std::env;
use std::path::PathBuf;
use std::process::Command;

fn main() {
    let guest = PathBuf::from(env::var("CARGO_MANIFEST_DIR").unwrap()).join("../../priv/guest");
    let sources = ["evum-init.c", "evum-ctl.c"].map(|file| guest.join(file));
    let output = PathBuf::from(env::var("OUT_DIR").unwrap()).join("evum-init");
    for file in sources.iter().chain([&guest.join("evum-guest.h")]) {
        println!("cargo:rerun-if-changed={}", file.display());
    }
    println!("cargo:rerun-if-env-changed=EVUM_INIT_CC");

    let compiler = env::var("EVUM_INIT_CC").unwrap_or_else(|_| "musl-gcc".into());
    let status = Command::new(&compiler)
        .args(["-static", "-Os", "-s", "-Wall", "-Wextra", "-Werror", "-o"])
        .arg(&output)
        .args(&sources)
        .status()
        .unwrap_or_else(|e| panic!("cannot run {compiler} (install musl-tools, or set EVUM_INIT_CC): {e}"));
    assert!(status.success(), "{compiler} could not build {}", guest.display());
}
