//! The committed header `include/quiver.h` is what cbindgen makes of the code
//! today; `QUIVER_BLESS=1` rewrites it.

use std::path::Path;

#[test]
fn committed_header_matches_the_code() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    let config = cbindgen::Config::from_file(dir.join("cbindgen.toml")).expect("cbindgen.toml");
    let mut generated = Vec::new();
    cbindgen::Builder::new()
        .with_crate(dir)
        .with_config(config)
        .generate()
        .expect("cbindgen parses ffi/src")
        .write(&mut generated);
    let path = dir.join("include/quiver.h");
    if std::env::var_os("QUIVER_BLESS").is_some() {
        std::fs::write(&path, &generated).expect("write the header");
        return;
    }
    let committed = std::fs::read(&path).unwrap_or_default();
    assert!(
        committed == generated,
        "ffi/include/quiver.h is out of date with ffi/src/lib.rs; \
         regenerate it with QUIVER_BLESS=1 cargo test -p quiver-ffi --test header"
    );
}
