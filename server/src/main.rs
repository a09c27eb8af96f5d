//! The switchyard binary (placeholder until the server issue).
fn main() {}
