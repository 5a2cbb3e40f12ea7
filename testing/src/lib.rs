//! Test support shared by the whole workspace, depending on no other
//! Trellis crate.
//!
//! - [`wait_for`] (and [`wait_for_blocking`]): wait on a condition with a
//!   deadline rather than sleep a fixed time; a [`Timeout`] says what was
//!   waited for and how long.
#![forbid(unsafe_code)]

mod wait;

pub use wait::{wait_for, wait_for_blocking, Timeout, POLL};
