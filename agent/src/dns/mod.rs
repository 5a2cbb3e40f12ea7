//! The agent's DNS proxy, on 127.0.0.1:15053 over UDP and TCP, as Istio's:
//! the mesh's hostnames are answered from the view of the mesh, everything
//! else is forwarded to the host's resolvers. With capture (iptables or
//! nftables) the host's DNS traffic is redirected to it, so unmodified
//! clients resolve mesh names (and the ServiceEntry addresses the proxy
//! then captures).
//!
//! Along the way of a query: [`server`] (the listeners, bounded
//! concurrency) → [`answer`] (pure: parse, look the name up in the
//! [`NameTable`](trellis_dataplane::mesh::names::NameTable) of the mesh view in force, build the reply or decide to
//! forward) → [`forward`] (the upstreams from `/etc/resolv.conf` or
//! `--dns-upstream`; SERVFAIL when none answers). The table is built with
//! each view ([`trellis_dataplane::mesh::build`]), so it changes with every
//! config update.
pub mod answer;
pub mod forward;
mod frame;
pub mod server;
#[cfg(any(test, feature = "test-util"))]
pub mod testing;

pub use answer::{answer, servfail, Action, Transport};
pub use forward::{nameservers, ForwardError, Forwarder};
pub use server::{serve, Listeners, Names, Server};

#[cfg(test)]
mod tests;
