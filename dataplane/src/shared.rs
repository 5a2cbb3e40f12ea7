//! [`Shared`]: a value read on every request and replaced whole on update,
//! so a request sees one consistent version and an update never blocks
//! traffic for longer than a pointer swap.
use std::sync::{Arc, RwLock};

/// The current version of a value.
pub struct Shared<T>(RwLock<Arc<T>>);

impl<T> Shared<T> {
    pub fn new(v: T) -> Self {
        Self(RwLock::new(Arc::new(v)))
    }

    /// The version in force now.
    pub fn load(&self) -> Arc<T> {
        self.0.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Puts `v` in force for every later [`Shared::load`].
    pub fn store(&self, v: T) {
        *self.0.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(v);
    }
}
