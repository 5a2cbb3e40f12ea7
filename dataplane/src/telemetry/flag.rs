//! Envoy's response flags, which Istio users read in access logs and in
//! the `response_flags` metric label.
use std::fmt;

/// Why a request or connection ended the way it did, when not simply by the
/// upstream's answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Flag {
    /// No healthy upstream endpoint.
    NoHealthyUpstream,
    /// Connecting to the upstream failed.
    UpstreamConnectFailure,
    /// The upstream did not answer in time.
    UpstreamTimeout,
    /// Retries exhausted (or the retry budget spent) and the last try failed.
    UpstreamRetryLimitExceeded,
    /// A connection pool limit was hit.
    UpstreamOverflow,
    /// The downstream went away before the response was done.
    DownstreamConnectionTermination,
    /// No route matched.
    NoRouteFound,
    /// The request was aborted by fault injection.
    FaultInjected,
    /// The request was delayed by fault injection.
    DelayInjected,
    /// The upstream connection or stream broke before a response.
    UpstreamConnectionTermination,
    /// The downstream sent something that is not valid HTTP.
    DownstreamProtocolError,
    /// The upstream's response is not valid HTTP, or breaks a limit (its
    /// headers too large).
    UpstreamProtocolError,
}

impl Flag {
    /// The short name in access logs and metrics.
    pub fn code(self) -> &'static str {
        match self {
            Flag::NoHealthyUpstream => "UH",
            Flag::UpstreamConnectFailure => "UF",
            Flag::UpstreamTimeout => "UT",
            Flag::UpstreamRetryLimitExceeded => "URX",
            Flag::UpstreamOverflow => "UO",
            Flag::DownstreamConnectionTermination => "DC",
            Flag::NoRouteFound => "NR",
            Flag::FaultInjected => "FI",
            Flag::DelayInjected => "DI",
            Flag::UpstreamConnectionTermination => "UC",
            Flag::DownstreamProtocolError => "DPE",
            Flag::UpstreamProtocolError => "UPE",
        }
    }
}

impl fmt::Display for Flag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.code())
    }
}
