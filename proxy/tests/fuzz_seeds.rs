//! The fuzz targets' seed corpora (`fuzz/seeds/<target>/`) run through the
//! same entry points on every `cargo test`, so a seed that regresses fails
//! here without cargo fuzz; each entry point asserts its own property.

use std::path::Path;

fn run(target: &str, f: fn(&[u8])) -> usize {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../fuzz/seeds")
        .join(target);
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).expect("seed corpus") {
        let bytes = std::fs::read(entry.expect("entry").path()).expect("seed");
        f(&bytes);
        n += 1;
    }
    n
}

#[test]
fn seeds_pass_their_properties() {
    assert!(run("h1_guard", proxy::fuzzing::h1_guard) >= 4);
    assert!(run("hpack_reader", proxy::fuzzing::hpack) >= 3);
    assert!(run("dns_query", proxy::fuzzing::dns_query) >= 4);
}
