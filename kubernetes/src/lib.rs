//! `trellis-kubernetes`: Trellis and a Kubernetes cluster's API server.
//!
//! [`client`] connects to the API server (a kubeconfig file, or the pod's
//! service account inside the cluster) with kube-rs over rustls (ring).
//! The control-plane node that runs in a cluster uses it to watch the
//! cluster's services and pods, to review pods' service-account tokens,
//! and to serve the admission webhooks; `trellis` uses it for the CRDs.
//! [`crd`] generates the CustomResourceDefinitions of the Istio kinds
//! from `trellis_api::config`; [`config`] reads the Istio resources applied
//! to the cluster as mesh configuration. [`roots`] keeps the mesh root in
//! a ConfigMap of every namespace, for the injected agents.
#![forbid(unsafe_code)]

pub mod client;
pub mod config;
pub mod crd;
pub mod discovery;
pub mod roots;
pub mod tokenreview;
pub mod webhook;
