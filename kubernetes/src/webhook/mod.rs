//! The admission webhooks the control-plane node serves to its cluster's
//! API server, over HTTPS (HTTP/1.1) on port 15017:
//!
//! - `POST /inject` (MutatingWebhookConfiguration [`INJECTOR`]): a pod
//!   gets the agent ([`inject`]).
//! - `POST /validate` (ValidatingWebhookConfiguration [`VALIDATOR`]): an
//!   Istio resource is checked as `trellis apply` checks it ([`validate`]).
//!
//! Both read and answer an `admission.k8s.io/v1` AdmissionReview; a body
//! that is not one, or larger than [`MAX_REVIEW_BYTES`], is answered 400
//! with the reason. [`ca_bundle`] keeps the configurations trusting the
//! mesh root. The TLS configuration (a certificate from the mesh CA) is
//! the caller's.
pub mod ca_bundle;
pub mod inject;
pub mod validate;

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use k8s_openapi::api::core::v1::Pod;
use kube::core::admission::{AdmissionRequest, AdmissionResponse, AdmissionReview};
use kube::core::DynamicObject;
use kube::Resource;
use serde::de::DeserializeOwned;
use tokio::net::TcpListener;

pub use ca_bundle::{INJECTOR, VALIDATOR};
pub use inject::Injection;

/// The largest review read: the API server stores objects of up to
/// 1.5 MiB, and an update's review carries the old object and the new.
pub const MAX_REVIEW_BYTES: usize = 4 << 20;
/// A client has this long to finish its TLS handshake, then to send a
/// request's head, then its body: as long as the API server waits for an
/// answer at most (`timeoutSeconds`), so that a slow client holds
/// nothing for longer.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(10);

/// The webhooks' settings, from the control-plane node's flags.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Options {
    /// Where they listen (`--webhook-listen`).
    pub listen: std::net::SocketAddr,
    /// The image of injected containers (`--agent-image`).
    pub agent_image: String,
}

/// The names the webhooks' certificate is for: the chart's Service in the
/// node's namespace (short and with the cluster domain), and the address
/// it listens on unless that is a wildcard (`clientConfig.url` by IP).
pub fn server_names(namespace: &str, listen: std::net::SocketAddr) -> Vec<String> {
    let service = format!("{SERVICE}.{namespace}.svc");
    let mut names = vec![format!("{service}.cluster.local"), service];
    if !listen.ip().is_unspecified() {
        names.push(listen.ip().to_string());
    }
    names
}

/// The chart's Service in front of the control-plane node.
pub const SERVICE: &str = "trellis-controlplane";

/// A request body that is not a review to answer: answered 400 with
/// this message.
#[derive(Debug, thiserror::Error)]
pub enum BadReview {
    #[error("the review is larger than {MAX_REVIEW_BYTES} bytes")]
    TooLarge,
    #[error("reading the review: {0}")]
    Read(String),
    #[error("not an admission.k8s.io/v1 AdmissionReview: {0}")]
    Json(#[from] serde_json::Error),
    #[error("an AdmissionReview of apiVersion `{0}`; this webhook reads admission.k8s.io/v1 (set admissionReviewVersions: [v1])")]
    Version(String),
    #[error("an AdmissionReview without a request")]
    NoRequest,
}

/// Serves both webhooks on `listener` with `tls` until the task is
/// dropped; `injection` is what injected pods get.
pub async fn serve(listener: TcpListener, tls: Arc<rustls::ServerConfig>, injection: Injection) {
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    let injection = Arc::new(injection);
    loop {
        let (tcp, remote) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                tracing::warn!(error = %e, "webhook listener: accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let acceptor = acceptor.clone();
        let injection = injection.clone();
        tokio::spawn(async move {
            let tls = match tokio::time::timeout(CLIENT_TIMEOUT, acceptor.accept(tcp)).await {
                Ok(Ok(tls)) => tls,
                Ok(Err(e)) => {
                    tracing::debug!(%remote, error = %e, "webhook: TLS handshake failed");
                    return;
                }
                Err(_) => return,
            };
            let service = hyper::service::service_fn(move |req| {
                let injection = injection.clone();
                async move { Ok::<_, Infallible>(handle(req, &injection).await) }
            });
            if let Err(e) = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(CLIENT_TIMEOUT)
                .serve_connection(TokioIo::new(tls), service)
                .await
            {
                tracing::debug!(%remote, error = %e, "webhook: connection failed");
            }
        });
    }
}

async fn handle(req: Request<Incoming>, injection: &Injection) -> Response<Full<Bytes>> {
    let start = std::time::Instant::now();
    let path = req.uri().path().to_string();
    let response = respond(&path, req, injection).await;
    // From the request's head to the answer, body read included: what
    // `trellis-bench inject` reads.
    tracing::debug!(
        path,
        status = response.status().as_u16(),
        elapsed_us = start.elapsed().as_micros() as u64,
        "review answered"
    );
    response
}

async fn respond(
    path: &str,
    req: Request<Incoming>,
    injection: &Injection,
) -> Response<Full<Bytes>> {
    if path != "/inject" && path != "/validate" {
        return text(
            StatusCode::NOT_FOUND,
            "no such webhook; there are /inject and /validate",
        );
    }
    if req.method() != Method::POST {
        return text(StatusCode::METHOD_NOT_ALLOWED, "a review is POSTed");
    }
    let read = Limited::new(req.into_body(), MAX_REVIEW_BYTES).collect();
    let body = match tokio::time::timeout(CLIENT_TIMEOUT, read).await {
        Ok(Ok(b)) => b.to_bytes(),
        Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => {
            return bad(BadReview::TooLarge);
        }
        Ok(Err(e)) => return bad(BadReview::Read(e.to_string())),
        Err(_) => {
            return bad(BadReview::Read(format!(
                "not all within {CLIENT_TIMEOUT:?}"
            )))
        }
    };
    let answer = if path == "/inject" {
        answer::<Pod>(&body, |r| inject_review(r, injection))
    } else {
        answer::<DynamicObject>(&body, validate::review)
    };
    answer.unwrap_or_else(bad)
}

/// The review in `body`, answered by `decide`.
fn answer<T>(
    body: &[u8],
    decide: impl FnOnce(&AdmissionRequest<T>) -> AdmissionResponse,
) -> Result<Response<Full<Bytes>>, BadReview>
where
    T: Resource + DeserializeOwned,
{
    let req = read::<T>(body)?;
    let review = decide(&req).into_review();
    let json = serde_json::to_vec(&review).expect("an AdmissionReview serializes to JSON");
    Ok(Response::builder()
        .header(http::header::CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(json)))
        .expect("a valid response"))
}

/// Reads an `admission.k8s.io/v1` review of a `T`.
pub fn read<T: Resource + DeserializeOwned>(body: &[u8]) -> Result<AdmissionRequest<T>, BadReview> {
    let review: AdmissionReview<T> = serde_json::from_slice(body)?;
    if review.types.api_version != "admission.k8s.io/v1" || review.types.kind != "AdmissionReview" {
        return Err(BadReview::Version(format!(
            "{}, kind {}",
            review.types.api_version, review.types.kind
        )));
    }
    review.try_into().map_err(|_| BadReview::NoRequest)
}

/// The answer to a pod's review: allowed, with the patch that injects it
/// when it is to be.
pub fn inject_review(req: &AdmissionRequest<Pod>, injection: &Injection) -> AdmissionResponse {
    let allowed = AdmissionResponse::from(req);
    let Some(pod) = &req.object else {
        return allowed;
    };
    match injection.patch(pod) {
        Ok(patch) => allowed.with_patch(patch).expect("a JSON patch serializes"),
        Err(skip) => {
            tracing::debug!(pod = %req.name, namespace = ?req.namespace, ?skip, "not injected");
            allowed
        }
    }
}

fn bad(e: BadReview) -> Response<Full<Bytes>> {
    text(StatusCode::BAD_REQUEST, &e.to_string())
}

fn text(status: StatusCode, message: &str) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header(http::header::CONTENT_TYPE, "text/plain; charset=utf-8")
        .body(Full::new(Bytes::from(format!("{message}\n"))))
        .expect("a valid response")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_body_that_is_not_a_v1_review_says_why() {
        let e = read::<Pod>(b"{not json").unwrap_err();
        assert!(
            e.to_string()
                .starts_with("not an admission.k8s.io/v1 AdmissionReview"),
            "{e}"
        );
        let e =
            read::<Pod>(br#"{"apiVersion":"admission.k8s.io/v1beta1","kind":"AdmissionReview"}"#)
                .unwrap_err();
        assert!(e.to_string().contains("admission.k8s.io/v1beta1"), "{e}");
        let e = read::<Pod>(br#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview"}"#)
            .unwrap_err();
        assert!(matches!(e, BadReview::NoRequest), "{e}");
    }
}
