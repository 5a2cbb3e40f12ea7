//! Istio-compatible configuration: Rust types for the `networking.istio.io`
//! and `security.istio.io` kinds Trellis serves, YAML read as Istio reads
//! it ([`crate::yaml`]), and validation whose errors name the field.
//!
//! [`check_documents`] turns a multi-document YAML stream into
//! [`Resource`]s (`apiVersion`, `kind`, [`Metadata`], typed [`Spec`]) and
//! reports every problem of every document: each spec is first checked
//! against Istio's published schema of its kind (`schema.rs`, a table
//! generated from Istio's CRDs: every field Istio has is accepted, unknown
//! fields and wrong types are errors), then typed, then checked by Istio's
//! semantic rules ([`Validate`], one file per kind). Problems are errors
//! ([`DocumentErrors`]) or, where Istio only warns and for fields Trellis
//! accepts but does not act on (the one list is `support.rs`), warnings
//! ([`DocumentWarnings`]). [`parse_documents`] is the same, all or
//! nothing, without the warnings; a [`ConfigError`] lists every problem as
//! `document N (Kind namespace/name): field.path: reason`. The metadata
//! the API server fills in (`uid`, `managedFields`, ...) and a top-level
//! `status` are accepted and dropped, so `kubectl get -o yaml` output
//! parses. The spec types follow Istio's field names and serialize back to
//! the same YAML for config dumps: [`VirtualService`], [`DestinationRule`],
//! [`ServiceEntry`], [`WorkloadEntry`], [`Gateway`], [`Sidecar`],
//! [`WorkloadGroup`] (networking), [`PeerAuthentication`],
//! [`AuthorizationPolicy`], [`RequestAuthentication`] (security), one file
//! each, with the types they share ([`ServerTlsSettings`],
//! [`ConnectionPoolSettings`], [`PolicyTargetReference`], the workload
//! selectors) in files of their own. Helpers the proxy needs are here too,
//! pure: [`StringMatch::matches`], [`Protocol::from_port`], Go-style
//! [`Duration`]s.

mod authorization_policy;
mod client_tls;
mod destination_rule;
mod duration;
mod error;
mod gateway;
mod host;
mod http_policy;
mod http_response;
mod http_route;
mod parse;
mod peer_authentication;
mod percent;
mod protocol;
mod regex;
mod request_authentication;
mod resource;
mod schema;
mod server_tls;
mod service_entry;
mod sidecar;
mod string_match;
mod support;
mod target_ref;
mod traffic_policy;
mod validate;
mod virtual_service;
mod workload_entry;
mod workload_group;
mod workload_selector;

pub use authorization_policy::{
    AuthorizationAction, AuthorizationPolicy, AuthorizationRule, Condition, ExtensionProvider,
    Operation, RuleFrom, RuleTo, Source, CONDITION_KEYS,
};
pub use client_tls::{ClientTlsSettings, TlsMode};
pub use destination_rule::{DestinationRule, Subset};
pub use duration::{Duration, DurationError};
pub use error::{ConfigError, DocumentErrors, DocumentWarnings, FieldError};
pub use gateway::{Gateway, GatewayPort, Server};
pub use host::{canonical_host, host_matches};
pub use http_policy::{
    Abort, CorsPolicy, Delay, HttpFaultInjection, HttpRetry, UnmatchedPreflights,
    GRPC_STATUS_NAMES, RETRY_ON_CONDITIONS,
};
pub use http_response::{HttpBody, HttpDirectResponse, HttpRedirect, RedirectPortSelection};
pub use http_route::{
    HeaderOperations, Headers, HttpMatchRequest, HttpMirrorPolicy, HttpRewrite, HttpRoute,
    HttpRouteDestination, RegexRewrite,
};
pub use parse::{check_documents, parse_documents, Checks};
pub use peer_authentication::{MtlsMode, MutualTls, PeerAuthentication};
pub use percent::Percent;
pub use protocol::Protocol;
pub use regex::Regex;
pub use request_authentication::{ClaimToHeader, JwtHeader, JwtRule, RequestAuthentication};
pub use resource::{ApiVersion, Checked, Group, KindNames, KindSpec, Metadata, Resource, Spec};
pub use schema::openapi_schema;
pub use server_tls::{ServerTlsMode, ServerTlsSettings, TlsProtocol};
pub use service_entry::{Location, Resolution, ServiceEntry, ServicePort};
pub use sidecar::{
    CaptureMode, IstioEgressListener, IstioIngressListener, OutboundTrafficMode,
    OutboundTrafficPolicy, Sidecar, SidecarPort,
};
pub use string_match::{HeaderMatch, StringMatch};
pub use target_ref::PolicyTargetReference;
pub use traffic_policy::{
    ConnectionPoolSettings, ConsistentHashLb, H2UpgradePolicy, HttpCookie, HttpSettings,
    LoadBalancerSettings, LocalityDistribute, LocalityFailover, LocalityLbSetting, Maglev,
    OutlierDetection, PortTrafficPolicy, RingHash, SimpleLb, TcpKeepalive, TcpSettings,
    TrafficPolicy, TunnelSettings, Warmup,
};
pub use validate::{is_dns1123_label, is_dns1123_subdomain, Validate};
pub use virtual_service::{
    binds_mesh, Destination, L4MatchAttributes, PortSelector, RouteDestination, TcpRoute,
    TlsMatchAttributes, TlsRoute, VirtualService,
};
pub use workload_entry::{WorkloadEntry, UNIX_ADDRESS_PREFIX};
pub use workload_group::{
    ExecHealthCheckConfig, GrpcHealthCheckConfig, HttpHeader, HttpHealthCheckConfig,
    ReadinessProbe, TcpHealthCheckConfig, WorkloadGroup, WorkloadGroupMetadata,
};
pub use workload_selector::{WorkloadLabelSelector, WorkloadSelector};

#[cfg(test)]
mod tests;
