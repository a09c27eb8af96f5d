//! Provider adapters (placeholder while the crate is written).
