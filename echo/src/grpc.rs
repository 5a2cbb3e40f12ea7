//! The gRPC side: the `trellis.echo.v1.Echo` service over h2c. Each
//! response carries the message, the [`Responder`] and the request
//! metadata.
use std::pin::Pin;
use std::sync::Arc;

use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpStream;
use tokio_stream::{Stream, StreamExt};
use tonic::metadata::MetadataMap;
use tonic::{Request, Response, Status, Streaming};

use crate::report::{header_map, Responder};
use crate::v1::echo_server::{Echo, EchoServer};
use crate::v1::{EchoRequest, EchoResponse};
use crate::State;

/// The tonic service, cloned for each connection.
pub(crate) fn service(state: Arc<State>) -> EchoServer<EchoService> {
    EchoServer::new(EchoService { state })
}

/// Serves one h2c connection until the client closes it.
pub(crate) async fn serve_connection(stream: TcpStream, svc: EchoServer<EchoService>) {
    // A client that goes away mid-call is no news to a test server.
    let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
        .serve_connection(TokioIo::new(stream), TowerToHyperService::new(svc))
        .await;
}

/// Answers with the [`Responder`] and counts calls in the shared state.
pub(crate) struct EchoService {
    state: Arc<State>,
}

#[tonic::async_trait]
impl Echo for EchoService {
    async fn echo(&self, req: Request<EchoRequest>) -> Result<Response<EchoResponse>, Status> {
        self.state.count_request();
        let metadata = metadata(req.metadata());
        let reply = response(&self.state.workload, req.into_inner().message, metadata);
        Ok(Response::new(reply))
    }

    type StreamStream = Pin<Box<dyn Stream<Item = Result<EchoResponse, Status>> + Send>>;

    async fn stream(
        &self,
        req: Request<Streaming<EchoRequest>>,
    ) -> Result<Response<Self::StreamStream>, Status> {
        self.state.count_request();
        let metadata = metadata(req.metadata());
        let state = self.state.clone();
        let replies = req
            .into_inner()
            .map(move |m| m.map(|m| response(&state.workload, m.message, metadata.clone())));
        Ok(Response::new(Box::pin(replies)))
    }
}

fn metadata(m: &MetadataMap) -> std::collections::HashMap<String, String> {
    header_map(&m.clone().into_headers()).into_iter().collect()
}

fn response(
    w: &Responder,
    message: String,
    metadata: std::collections::HashMap<String, String>,
) -> EchoResponse {
    EchoResponse {
        message,
        service: w.service.clone(),
        version: w.version.clone(),
        identity: w.identity.clone(),
        metadata,
    }
}
