//! Opaque byte echo: for `--tcp` connections and for HTTP connections
//! after an Upgrade.
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};

/// Writes back every byte read until the peer closes its side, then
/// closes ours.
pub(crate) async fn echo<T: AsyncRead + AsyncWrite>(io: T) {
    let (mut rd, mut wr) = tokio::io::split(io);
    // An error means the peer is gone: nothing left to echo to.
    if tokio::io::copy(&mut rd, &mut wr).await.is_ok() {
        let _ = wr.shutdown().await;
    }
}
