//! Fuzzes the DNS proxy's answering path (`dns::answer`, `dns::servfail`),
//! which reads every datagram and TCP message sent to the agent's DNS port
//! (untrusted input), against a table with short names, a wildcard, both
//! address families and an answer too big for plain UDP.
//!
//! Beyond "no panic": a reply carries the query's id and is a response,
//! and a reply fed back in gets no reply (two servers cannot bounce
//! messages at each other).

#![no_main]

use std::net::IpAddr;
use std::sync::LazyLock;

use libfuzzer_sys::fuzz_target;
use trellis_agent::dns::{answer, servfail, Action, Transport};
use trellis_dataplane::mesh::names::NameTable;
use trellis_dataplane::mesh::Service;

static TABLE: LazyLock<NameTable> = LazyLock::new(|| {
    let svc = |host: &str, addresses: Vec<IpAddr>| Service {
        host: host.into(),
        namespace: "default".into(),
        ports: Vec::new(),
        addresses,
    };
    let services = [
        svc("reviews.default.svc.cluster.local", vec![[240, 0, 0, 1].into()]),
        svc(
            "dual.prod.svc.cluster.local",
            vec![[240, 0, 0, 2].into(), "fd00::2".parse().unwrap()],
        ),
        svc("*.example.com", vec![[240, 0, 0, 3].into()]),
        svc(
            "many.default.svc.cluster.local",
            (1..=60).map(|i| [240, 0, 1, i].into()).collect(),
        ),
    ];
    NameTable::new(&services, "default", "cluster.local")
});

fn check_reply(query: &[u8], reply: &[u8]) {
    assert_eq!(reply.get(..2), query.get(..2), "the query's id");
    assert!(reply.len() >= 12 && reply[2] & 0x80 != 0, "a response");
    for transport in [Transport::Udp, Transport::Tcp] {
        assert_eq!(answer(&TABLE, reply, transport), Action::Drop, "a reply is not answered");
    }
}

fuzz_target!(|data: &[u8]| {
    for transport in [Transport::Udp, Transport::Tcp] {
        if let Action::Reply(reply) = answer(&TABLE, data, transport) {
            check_reply(data, &reply);
        }
    }
    if let Some(reply) = servfail(data) {
        check_reply(data, &reply);
    }
});
