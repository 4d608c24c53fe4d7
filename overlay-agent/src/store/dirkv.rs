//! The `dir` backend of [`super::kv::Kv`] (being written).
