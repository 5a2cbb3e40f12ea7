//! Test support shared by the whole workspace, depending on no other
//! Trellis crate.
//!
//! - [`wait_for`] (and [`wait_for_blocking`]): wait on a condition with a
//!   deadline rather than sleep a fixed time; a [`Timeout`] says what was
//!   waited for and how long.
//! - [`modgraph`]: the module-cycle check, run over the workspace by
//!   `tests/modules.rs`; `trellis-modcheck CRATE_DIR` prints a crate's
//!   graph and cycles.
#![forbid(unsafe_code)]

pub mod modgraph;
mod wait;

pub use wait::{eventually, wait_for, wait_for_blocking, Timeout, POLL};
