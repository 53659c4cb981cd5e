//! Arbitrary bytes as a layer tar, applied into a scratch directory: errors are fine, panics are
//! bugs, and nothing may appear beside the scratch root.
#![no_main]
use libfuzzer_sys::fuzz_target;
use lamina::apply::{Applier, ApplyOptions};

fuzz_target!(|data: &[u8]| {
    let outer = tempfile::tempdir().unwrap();
    let root = outer.path().join("root");
    std::fs::create_dir(&root).unwrap();
    let mut applier = Applier::new(&root, ApplyOptions { chown: false }).unwrap();
    let _ = applier.apply_layer("fuzz", data);
    let beside: Vec<_> = std::fs::read_dir(outer.path()).unwrap().collect();
    assert_eq!(beside.len(), 1, "something was written beside the root");
});
