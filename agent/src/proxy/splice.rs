//! Opaque TCP: bytes both ways until either side closes, then the
//! connection is reported.
use std::sync::Arc;

use tokio::io::{AsyncRead, AsyncWrite};

use crate::telemetry::{TcpLog, Telemetry};

/// Copies between `downstream` and `upstream` until both directions end.
pub async fn run<D, U>(
    telemetry: &Arc<crate::telemetry::Telemetry>,
    log: TcpLog,
    mut downstream: D,
    mut upstream: U,
) where
    D: AsyncRead + AsyncWrite + Unpin,
    U: AsyncRead + AsyncWrite + Unpin,
{
    telemetry.tcp_opened(&log);
    let (received, sent) = match tokio::io::copy_bidirectional(&mut downstream, &mut upstream).await
    {
        Ok(counts) => counts,
        Err(e) => {
            tracing::debug!(error = %e, "TCP connection ended with an error");
            (0, 0)
        }
    };
    report(telemetry, &log, sent, received);
}

fn report(telemetry: &Telemetry, log: &TcpLog, sent: u64, received: u64) {
    telemetry.tcp_closed(log, sent, received);
}
