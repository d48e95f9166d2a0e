//! The C ABI from C: examples/c/seed.c compiled with `cc` against
//! ffi/include/quiver.h and libquiver_ffi, run on an embedded cluster, under
//! valgrind, and against real `quiver center`/`quiver worker` processes.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::TestCluster;

/// Where cargo put libquiver_ffi for this test: built as a dependency, it
/// stays in `deps/` next to the test binary (only `cargo build -p quiver-ffi`
/// copies it up to `target/<profile>/`).
fn target_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("test path");
    let deps = exe.parent().expect("target/<profile>/deps");
    [deps, deps.parent().expect("target/<profile>")]
        .into_iter()
        .find(|d| d.join("libquiver_ffi.so").exists())
        .unwrap_or(deps)
        .to_path_buf()
}

/// Compiles examples/c/seed.c once per test binary.
fn seed_c() -> &'static Path {
    static BIN: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    BIN.get_or_init(|| {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let lib = target_dir();
        assert!(
            lib.join("libquiver_ffi.so").exists(),
            "libquiver_ffi.so missing in {}",
            lib.display()
        );
        let out = lib.join("c-seed-test");
        let cc = std::env::var("CC").unwrap_or_else(|_| "cc".into());
        let status = Command::new(&cc)
            .args(["-std=c11", "-Wall", "-Wextra", "-Werror", "-O1", "-g"])
            .arg(root.join("examples/c/seed.c"))
            .arg("-I")
            .arg(root.join("ffi/include"))
            .arg("-L")
            .arg(&lib)
            .args(["-lquiver_ffi", "-lm"])
            .arg(format!("-Wl,-rpath,{}", lib.display()))
            .arg("-o")
            .arg(&out)
            .status()
            .unwrap_or_else(|e| panic!("cannot run {cc}: {e}"));
        assert!(status.success(), "{cc} failed to compile examples/c/seed.c");
        out
    })
}

fn run(cmd: &mut Command) -> (Output, String) {
    let out = cmd.output().expect("run the C seed");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out, text)
}

#[test]
fn the_c_seed_runs_on_an_embedded_cluster_without_copies() {
    let (out, text) = run(Command::new(seed_c()).args(["--arrays", "20", "--size", "100000"]));
    assert!(out.status.success(), "C seed failed:\n{text}");
    assert!(text.contains("the same buffer"), "{text}");
    assert!(
        text.contains("status 2, \"key 'no-such-key' not found\""),
        "{text}"
    );
    assert!(text.ends_with("ok\n"), "{text}");
}

#[test]
fn the_c_seed_is_clean_under_valgrind() {
    if Command::new("valgrind").arg("--version").output().is_err() {
        eprintln!("valgrind is not installed; skipping");
        return;
    }
    let (out, text) = run(Command::new("valgrind")
        .args([
            "--error-exitcode=99",
            "--leak-check=full",
            "--errors-for-leak-kinds=definite",
        ])
        .arg(seed_c())
        .args(["--arrays", "4", "--size", "10000", "--workers", "2"]));
    assert!(
        out.status.success(),
        "valgrind found errors or leaks:\n{text}"
    );
    assert!(text.contains("ERROR SUMMARY: 0 errors"), "{text}");
    assert!(text.contains("definitely lost: 0 bytes"), "{text}");
}

#[test]
fn the_c_seed_runs_against_center_and_worker_processes() {
    let cluster = TestCluster::start(2, &[]);
    let (out, text) = run(Command::new(seed_c()).args([
        "--arrays",
        "10",
        "--size",
        "100000",
        "--scheduler",
        &cluster.address,
    ]));
    assert!(
        out.status.success(),
        "C seed against a cluster failed:\n{text}"
    );
    assert!(text.contains("from the remote cluster"), "{text}");
    assert!(text.ends_with("ok\n"), "{text}");
}

#[test]
fn a_c_client_gets_a_clear_error_for_an_unreachable_center() {
    let (out, text) = run(Command::new(seed_c()).args(["--scheduler", "127.0.0.1:1"]));
    assert!(!out.status.success());
    assert!(
        text.contains("connect failed (status 5)") && text.contains("127.0.0.1:1"),
        "{text}"
    );
}
