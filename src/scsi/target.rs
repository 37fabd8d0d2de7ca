//! LUN table.
