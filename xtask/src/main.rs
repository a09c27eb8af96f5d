//! Dev workflows (placeholder).
fn main() {}
