//! Why one try of a request to an upstream (a peer agent, the application,
//! an endpoint without an agent) failed, told apart by what it means for
//! the request: whether it may have been processed (so whether it may be
//! sent again), and whose fault it was. [`Failure::flag`] is the Envoy
//! response flag each one is reported with.
use std::error::Error as StdError;
use std::io;

use trellis_dataplane::telemetry::Flag;

/// How a try failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Failure {
    /// No connection could be opened: nothing was sent (Envoy's
    /// `connect-failure`).
    Connect,
    /// The upstream refused the stream without processing it (HTTP/2
    /// `REFUSED_STREAM`, or a GOAWAY that left it out): it may be sent
    /// again (Envoy's `refused-stream`).
    Refused,
    /// The stream or the connection broke after the request was sent: the
    /// upstream may have processed it (Envoy's `reset`).
    Reset,
    /// The upstream's response is not valid HTTP or breaks a limit (a head
    /// too large): Envoy's `UPE`. Never sent again.
    UpstreamProtocol,
    /// The client's request body is malformed (a bad chunk size): its
    /// fault, answered 400 (`DPE`).
    DownstreamProtocol,
    /// The client went away while its request body was being read (`DC`).
    DownstreamGone,
}

impl Failure {
    /// The response flag a request that ends with this failure is reported with.
    pub fn flag(self) -> Flag {
        match self {
            Failure::Connect => Flag::UpstreamConnectFailure,
            Failure::Refused | Failure::Reset => Flag::UpstreamConnectionTermination,
            Failure::UpstreamProtocol => Flag::UpstreamProtocolError,
            Failure::DownstreamProtocol => Flag::DownstreamProtocolError,
            Failure::DownstreamGone => Flag::DownstreamConnectionTermination,
        }
    }

    /// Whether the client, not the upstream, is to blame.
    pub fn is_downstream(self) -> bool {
        matches!(self, Failure::DownstreamProtocol | Failure::DownstreamGone)
    }

    /// A request that was sent (or may have been) and failed with `e` from
    /// hyper's HTTP/1.1 client.
    pub fn of_hyper(e: &hyper::Error) -> Failure {
        if let Some(f) = downstream_body(e) {
            return f;
        }
        if e.is_parse() || e.is_parse_status() || e.is_parse_too_large() {
            return Failure::UpstreamProtocol;
        }
        Failure::Reset
    }

    /// A request whose HTTP/2 stream failed with `e` after it was opened.
    pub fn of_h2(e: &h2::Error) -> Failure {
        if e.is_io() {
            return Failure::Reset;
        }
        if e.is_remote() && (e.is_go_away() || e.reason() == Some(h2::Reason::REFUSED_STREAM)) {
            // A GOAWAY fails only the streams above the last one the peer
            // processed; REFUSED_STREAM says the stream was not processed.
            return Failure::Refused;
        }
        if e.is_library() && !e.is_go_away() {
            // h2 reset the stream itself over what the peer sent: a
            // response head past the limit, or one that breaks HTTP/2's
            // rules.
            return Failure::UpstreamProtocol;
        }
        Failure::Reset
    }
}

/// A request body that failed while it was read from the client: why, as
/// a failure, if `e` (or what caused it) is such a failure.
pub fn downstream_body(e: &(dyn StdError + 'static)) -> Option<Failure> {
    let mut next = Some(e);
    while let Some(e) = next {
        if let Some(d) = e.downcast_ref::<DownstreamBody>() {
            return Some(d.failure());
        }
        next = e.source();
    }
    None
}

/// A request body error from the client's side of the proxy, so that a
/// try that failed because of it is not blamed on the upstream.
#[derive(Debug, thiserror::Error)]
#[error("request body from the client: {0}")]
pub struct DownstreamBody(#[source] pub hyper::Error);

impl DownstreamBody {
    /// Malformed (hyper's decoder refused it: a bad chunk size, a body
    /// longer than its length) or cut off (the client went away).
    pub fn failure(&self) -> Failure {
        let mut next: Option<&(dyn StdError + 'static)> = self.0.source();
        while let Some(e) = next {
            if let Some(io) = e.downcast_ref::<io::Error>() {
                if matches!(
                    io.kind(),
                    io::ErrorKind::InvalidData | io::ErrorKind::InvalidInput
                ) {
                    return Failure::DownstreamProtocol;
                }
            }
            next = e.source();
        }
        if self.0.is_parse() {
            Failure::DownstreamProtocol
        } else {
            Failure::DownstreamGone
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_say_whose_fault_it_was() {
        let cases = [
            (Failure::Connect, "UF"),
            (Failure::Refused, "UC"),
            (Failure::Reset, "UC"),
            (Failure::UpstreamProtocol, "UPE"),
            (Failure::DownstreamProtocol, "DPE"),
            (Failure::DownstreamGone, "DC"),
        ];
        for (f, flag) in cases {
            assert_eq!(f.flag().code(), flag, "{f:?}");
            assert_eq!(f.is_downstream(), flag.starts_with('D'), "{f:?}");
        }
    }

    #[test]
    fn a_reset_of_our_own_is_not_a_refusal() {
        let refused: h2::Error = h2::Reason::REFUSED_STREAM.into();
        // A reason made by hand is a local (user) reset, not the peer's.
        assert_eq!(Failure::of_h2(&refused), Failure::Reset);
    }
}
