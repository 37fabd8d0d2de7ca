//! CDB decoding.
