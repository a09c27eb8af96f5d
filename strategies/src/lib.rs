//! Selection strategies (placeholder while the crate is written).
