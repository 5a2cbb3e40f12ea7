//! One query, decided: answered from the [`NameTable`], handed on to the
//! upstream resolvers, or refused. Pure (bytes in, bytes out), so the code
//! that reads untrusted datagrams is table-tested and fuzzed without
//! sockets.
//!
//! - A mesh name gets its A or AAAA records, authoritative; asked for a
//!   type it has no record of (AAAA of an IPv4-only service, MX, ...) it
//!   gets NOERROR with no answer (NODATA), never a forward, so the mesh's
//!   names do not leak to the host's resolvers.
//! - Everything else (other names, classes, opcodes, several questions) is
//!   forwarded as it came.
//! - A query that does not parse gets FORMERR when its header can be read,
//!   and nothing otherwise; a message that is itself a response gets
//!   nothing, so two servers cannot bounce errors at each other.
use hickory_proto::op::{Edns, Message, MessageType, Metadata, OpCode, ResponseCode};
use hickory_proto::rr::rdata::{A, AAAA};
use hickory_proto::rr::{DNSClass, Name, RData, Record, RecordType};

use trellis_dataplane::mesh::names::NameTable;

/// Seconds a client may keep a mesh answer (Istio's DNS proxy gives 30 too):
/// short, since a config update may change it.
pub const TTL: u32 = 30;
/// The UDP payload the agent offers in its EDNS record (the 2020 DNS flag
/// day value, which avoids fragmentation).
const EDNS_PAYLOAD: u16 = 1232;
/// The largest UDP message a client without EDNS takes.
const PLAIN_UDP_PAYLOAD: u16 = 512;
/// A DNS header's length.
const HEADER_LEN: usize = 12;

/// How the query came, which bounds the size of the answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transport {
    Udp,
    Tcp,
}

/// What to do with a query.
#[derive(Debug, PartialEq, Eq)]
pub enum Action {
    /// Send these bytes back.
    Reply(Vec<u8>),
    /// Not the mesh's: send the query, as it is, to an upstream resolver.
    Forward,
    /// Send nothing.
    Drop,
}

/// Decides what to do with `query` (a whole DNS message).
pub fn answer(table: &NameTable, query: &[u8], transport: Transport) -> Action {
    let msg = match Message::from_vec(query) {
        Ok(m) => m,
        Err(_) => return format_error(query).map_or(Action::Drop, Action::Reply),
    };
    if msg.metadata.message_type == MessageType::Response {
        return Action::Drop;
    }
    let [q] = msg.queries.as_slice() else {
        return Action::Forward;
    };
    if msg.metadata.op_code != OpCode::Query || q.query_class() != DNSClass::IN {
        return Action::Forward;
    }
    let Some(addrs) = lookup_key(q.name()).and_then(|k| table.lookup(&k)) else {
        return Action::Forward;
    };
    if msg.edns.as_ref().is_some_and(|e| e.version() > 0) {
        return encode(
            &reply_to(&msg, ResponseCode::BADVERS),
            limit(&msg, transport),
        );
    }
    let mut reply = reply_to(&msg, ResponseCode::NoError);
    reply.metadata.authoritative = true;
    let rdata: Vec<RData> = match q.query_type() {
        RecordType::A => addrs.v4.iter().map(|ip| RData::A(A(*ip))).collect(),
        RecordType::AAAA => addrs.v6.iter().map(|ip| RData::AAAA(AAAA(*ip))).collect(),
        _ => Vec::new(),
    };
    reply.answers = rdata
        .into_iter()
        .map(|d| Record::from_rdata(q.name().clone(), TTL, d))
        .collect();
    encode(&reply, limit(&msg, transport))
}

/// SERVFAIL for `query`, when no upstream answered it; `None` if it does
/// not parse (it would not have been forwarded).
pub fn servfail(query: &[u8]) -> Option<Vec<u8>> {
    let msg = Message::from_vec(query).ok()?;
    reply_to(&msg, ResponseCode::ServFail).to_vec().ok()
}

/// The answer's header and question: the request's id, opcode, RD and CD
/// bits and question, recursion available (the agent forwards), and an
/// EDNS record if the request had one.
fn reply_to(msg: &Message, code: ResponseCode) -> Message {
    let mut r = Message::response(msg.metadata.id, msg.metadata.op_code);
    r.metadata = Metadata::response_from_request(&msg.metadata);
    r.metadata.recursion_available = true;
    r.metadata.response_code = code;
    r.queries = msg.queries.clone();
    if msg.edns.is_some() {
        let mut edns = Edns::new();
        edns.set_max_payload(EDNS_PAYLOAD);
        r.edns = Some(edns);
    }
    r
}

/// FORMERR for a query that does not parse, if its header can be read and
/// says it is a query.
fn format_error(query: &[u8]) -> Option<Vec<u8>> {
    let [id_hi, id_lo, flags, ..] = *query else {
        return None;
    };
    if query.len() < HEADER_LEN || flags & 0x80 != 0 {
        return None;
    }
    let id = u16::from_be_bytes([id_hi, id_lo]);
    let mut r = Message::error_msg(
        id,
        OpCode::from_u8((flags >> 3) & 0x0f),
        ResponseCode::FormErr,
    );
    r.metadata.recursion_desired = flags & 0x01 != 0;
    r.metadata.recursion_available = true;
    r.to_vec().ok()
}

/// The largest answer the client takes over `transport`.
fn limit(msg: &Message, transport: Transport) -> usize {
    match transport {
        Transport::Tcp => usize::from(u16::MAX),
        Transport::Udp => usize::from(msg.edns.as_ref().map_or(PLAIN_UDP_PAYLOAD, |e| {
            e.max_payload().max(PLAIN_UDP_PAYLOAD)
        })),
    }
}

/// `reply` as bytes; over `limit`, only its header and question with TC
/// set, so the client asks again over TCP.
fn encode(reply: &Message, limit: usize) -> Action {
    let Ok(bytes) = reply.to_vec() else {
        return Action::Drop;
    };
    if bytes.len() <= limit {
        return Action::Reply(bytes);
    }
    reply
        .truncate()
        .to_vec()
        .map_or(Action::Drop, Action::Reply)
}

/// `name` as the table's keys are written (labels joined with dots, ASCII
/// lowercase), or `None` if a label holds a dot or a byte that is not
/// printable ASCII: no mesh host has one.
fn lookup_key(name: &Name) -> Option<String> {
    let mut key = String::with_capacity(name.len());
    for label in name.iter() {
        if label.iter().any(|b| !b.is_ascii_graphic() || *b == b'.') {
            return None;
        }
        if !key.is_empty() {
            key.push('.');
        }
        key.extend(label.iter().map(|b| char::from(b.to_ascii_lowercase())));
    }
    Some(key)
}

#[cfg(test)]
mod tests {
    use std::net::{IpAddr, Ipv4Addr};

    use hickory_proto::op::Query;

    use super::*;
    use trellis_dataplane::mesh::Service;

    fn table() -> NameTable {
        let svc = |host: &str, addresses: Vec<IpAddr>| Service {
            host: host.into(),
            namespace: "default".into(),
            ports: Vec::new(),
            addresses,
        };
        let services = [
            svc(
                "reviews.default.svc.cluster.local",
                vec![[240, 0, 0, 1].into()],
            ),
            svc(
                "dual.default.svc.cluster.local",
                vec![[240, 0, 0, 2].into(), "fd00::2".parse().unwrap()],
            ),
            svc(
                "many.default.svc.cluster.local",
                (1..=60).map(|i| [240, 0, 1, i].into()).collect(),
            ),
        ];
        NameTable::new(&services, "default", "cluster.local")
    }

    fn query(name: &str, rtype: RecordType) -> Message {
        let mut m = Message::query();
        m.metadata.id = 4242;
        m.metadata.recursion_desired = true;
        // As they come off the wire: fully qualified.
        let mut name = Name::from_ascii(name).unwrap();
        name.set_fqdn(true);
        m.add_query(Query::query(name, rtype));
        m
    }

    fn ask(m: &Message, transport: Transport) -> Action {
        answer(&table(), &m.to_vec().unwrap(), transport)
    }

    fn reply(m: &Message, transport: Transport) -> Message {
        match ask(m, transport) {
            Action::Reply(b) => Message::from_vec(&b).unwrap(),
            other => panic!("expected a reply, got {other:?}"),
        }
    }

    fn ips(r: &Message) -> Vec<String> {
        r.answers
            .iter()
            .map(|a| a.data.ip_addr().unwrap().to_string())
            .collect()
    }

    #[test]
    fn mesh_names_are_answered_with_their_records() {
        let r = reply(&query("Reviews.Default.", RecordType::A), Transport::Udp);
        assert_eq!(r.metadata.id, 4242);
        assert_eq!(r.metadata.message_type, MessageType::Response);
        assert_eq!(r.metadata.response_code, ResponseCode::NoError);
        assert!(r.metadata.authoritative && r.metadata.recursion_desired);
        assert_eq!(ips(&r), ["240.0.0.1"]);
        // The name as asked, case included (clients may check it).
        assert_eq!(r.answers[0].name.to_ascii(), "Reviews.Default.");
        assert_eq!(r.answers[0].ttl, TTL);
        assert_eq!(r.queries, query("Reviews.Default.", RecordType::A).queries);

        let r = reply(&query("dual", RecordType::AAAA), Transport::Tcp);
        assert_eq!(ips(&r), ["fd00::2"]);
    }

    #[test]
    fn other_types_of_mesh_names_get_nodata_not_a_forward() {
        for (name, rtype) in [
            ("reviews", RecordType::AAAA),
            ("reviews", RecordType::MX),
            ("dual", RecordType::TXT),
        ] {
            let r = reply(&query(name, rtype), Transport::Udp);
            assert_eq!(
                r.metadata.response_code,
                ResponseCode::NoError,
                "{name} {rtype}"
            );
            assert!(r.answers.is_empty(), "{name} {rtype}");
        }
    }

    #[test]
    fn what_the_mesh_does_not_know_is_forwarded() {
        assert_eq!(
            ask(&query("example.com", RecordType::A), Transport::Udp),
            Action::Forward
        );
        assert_eq!(
            ask(&query("reviews.other", RecordType::A), Transport::Udp),
            Action::Forward
        );
        let mut chaos = query("reviews", RecordType::TXT);
        chaos.queries[0].query_class = DNSClass::CH;
        assert_eq!(ask(&chaos, Transport::Udp), Action::Forward);
        let mut two = query("reviews", RecordType::A);
        two.add_query(Query::query(
            Name::from_ascii("dual").unwrap(),
            RecordType::A,
        ));
        assert_eq!(ask(&two, Transport::Udp), Action::Forward);
        let mut notify = query("reviews", RecordType::SOA);
        notify.metadata.op_code = OpCode::Notify;
        assert_eq!(ask(&notify, Transport::Udp), Action::Forward);
    }

    #[test]
    fn edns_is_answered_with_edns() {
        let mut q = query("reviews", RecordType::A);
        q.set_edns(Edns::new());
        let r = reply(&q, Transport::Udp);
        assert_eq!(r.edns.as_ref().map(Edns::max_payload), Some(EDNS_PAYLOAD));
        assert_eq!(ips(&r), ["240.0.0.1"]);
        let mut v1 = Edns::new();
        v1.set_version(1);
        q.set_edns(v1);
        // BADVERS (16), which hickory reads back as BADSIG, its other name.
        let code = reply(&q, Transport::Udp).metadata.response_code;
        assert_eq!(u16::from(code), u16::from(ResponseCode::BADVERS));
    }

    #[test]
    fn answers_too_big_for_udp_are_truncated() {
        // 60 A records are about 1 KB: over 512 bytes.
        let q = query("many", RecordType::A);
        let r = reply(&q, Transport::Udp);
        assert!(r.metadata.truncation && r.answers.is_empty(), "{r:?}");
        assert_eq!(r.queries, q.queries);
        let full = reply(&q, Transport::Tcp);
        assert!(!full.metadata.truncation);
        assert_eq!(full.answers.len(), 60);
        // A client that takes 4096 bytes over UDP gets them all.
        let mut big = q.clone();
        let mut edns = Edns::new();
        edns.set_max_payload(4096);
        big.set_edns(edns);
        assert_eq!(reply(&big, Transport::Udp).answers.len(), 60);
        assert_eq!(
            reply(&big, Transport::Udp).answers[0].data.ip_addr(),
            Some(Ipv4Addr::new(240, 0, 1, 1).into())
        );
    }

    #[test]
    fn malformed_queries_get_formerr_or_nothing() {
        let good = query("reviews", RecordType::A).to_vec().unwrap();
        // Cut inside the question: the header is there.
        let r = match answer(&table(), &good[..good.len() - 3], Transport::Udp) {
            Action::Reply(b) => Message::from_vec(&b).unwrap(),
            other => panic!("{other:?}"),
        };
        assert_eq!(r.metadata.id, 4242);
        assert_eq!(r.metadata.response_code, ResponseCode::FormErr);
        assert!(r.metadata.recursion_desired);
        // Shorter than a header, or a response: silence.
        assert_eq!(answer(&table(), &good[..5], Transport::Udp), Action::Drop);
        assert_eq!(answer(&table(), &[], Transport::Tcp), Action::Drop);
        let mut resp = query("reviews", RecordType::A);
        resp.metadata.message_type = MessageType::Response;
        assert_eq!(ask(&resp, Transport::Udp), Action::Drop);
        let mut bad_resp = resp.to_vec().unwrap();
        bad_resp.truncate(bad_resp.len() - 3);
        assert_eq!(answer(&table(), &bad_resp, Transport::Udp), Action::Drop);
    }

    #[test]
    fn servfail_keeps_id_and_question() {
        let q = query("example.com", RecordType::A);
        let r = Message::from_vec(&servfail(&q.to_vec().unwrap()).unwrap()).unwrap();
        assert_eq!(r.metadata.id, 4242);
        assert_eq!(r.metadata.response_code, ResponseCode::ServFail);
        assert_eq!(r.queries, q.queries);
        assert!(servfail(&[1, 2, 3]).is_none());
    }

    #[test]
    fn names_with_odd_bytes_are_not_mesh_names() {
        let n = Name::from_labels([b"rev\x00iews".as_slice(), b"default"]).unwrap();
        assert_eq!(lookup_key(&n), None);
        let n = Name::from_labels([b"a.b".as_slice(), b"default"]).unwrap();
        assert_eq!(lookup_key(&n), None);
        let n = Name::from_ascii("ReViews.default.").unwrap();
        assert_eq!(lookup_key(&n).as_deref(), Some("reviews.default"));
        assert_eq!(lookup_key(&Name::root()).as_deref(), Some(""));
    }
}
