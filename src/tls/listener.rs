//! A TLS listener for `axum::serve`: connections accepted on a TCP listener and handshaken
//! concurrently (a slow client delays nobody else, and gives up after
//! [`HANDSHAKE_TIMEOUT`]). Serves the operator's admission webhook and the agents' failsafe
//! endpoint.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;

/// How long a client may take to complete the TLS handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// TLS connections, handshaken concurrently so a slow client delays nobody else.
pub struct TlsListener {
    accepted: mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)>,
    local: std::io::Result<SocketAddr>,
    acceptor: JoinHandle<()>,
}

impl TlsListener {
    /// Accepts on `listener` (`what` names the server in log lines), each connection with the
    /// acceptor `acceptor` gives at that moment (so a renewed certificate is served from the
    /// next connection on).
    pub fn new(
        listener: TcpListener,
        what: &'static str,
        acceptor: impl Fn() -> TlsAcceptor + Send + 'static,
    ) -> Self {
        let local = listener.local_addr();
        let (send, accepted) = mpsc::channel(64);
        let acceptor = tokio::spawn(async move {
            loop {
                let (stream, peer) = match listener.accept().await {
                    Ok(connection) => connection,
                    Err(error) => {
                        tracing::warn!(%error, "{what}: accept failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                };
                let (tls, send) = (acceptor(), send.clone());
                tokio::spawn(async move {
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, tls.accept(stream)).await {
                        Ok(Ok(stream)) => {
                            let _ = send.send((stream, peer)).await;
                        }
                        Ok(Err(error)) => {
                            tracing::debug!(%error, %peer, "{what}: TLS handshake failed")
                        }
                        Err(_) => {
                            tracing::debug!(%peer, "{what}: TLS handshake timed out")
                        }
                    }
                });
            }
        });
        TlsListener {
            accepted,
            local,
            acceptor,
        }
    }
}

impl Drop for TlsListener {
    fn drop(&mut self) {
        self.acceptor.abort();
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.accepted.recv().await {
            Some(connection) => connection,
            // The acceptor only stops when this listener is dropped.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        match &self.local {
            Ok(addr) => Ok(*addr),
            Err(error) => Err(std::io::Error::new(error.kind(), error.to_string())),
        }
    }
}
