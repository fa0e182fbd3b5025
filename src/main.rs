//! Binary entry point (filled in by the serving work).
fn main() {}
