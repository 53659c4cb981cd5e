//! Placeholder until the pull benchmark lands.
fn main() {}
