//! Emulated disk.
