//! The agent's API clients and their deadlines. A partition that drops packets makes a call
//! hang rather than fail, and kube's client waits for an answer without limit by default; so
//! every client of the agent that makes calls (reports, reads, the node Lease) gives up on a
//! connection after [`CONNECT_DEADLINE`] and on an answer after [`CALL_DEADLINE`]. Watches use
//! a client without the answer deadline: a quiet watch sends nothing for minutes, and kube's
//! watcher has its own idle timeout.

use std::time::Duration;

use kube::Client;

/// How long a connection to the API server may take to open.
pub const CONNECT_DEADLINE: Duration = Duration::from_secs(5);
/// How long the API server may take to start answering a call once it is sent.
pub const CALL_DEADLINE: Duration = Duration::from_secs(10);

/// A client of the API server found as kube finds it (KUBECONFIG or in-cluster) that gives up
/// on a connection after [`CONNECT_DEADLINE`] and on an answer after [`CALL_DEADLINE`].
pub async fn with_deadlines() -> Result<Client, kube::Error> {
    let mut config = kube::Config::infer()
        .await
        .map_err(kube::Error::InferConfig)?;
    config.connect_timeout = Some(CONNECT_DEADLINE);
    config.read_timeout = Some(CALL_DEADLINE);
    // Count the answer's deadline from the request, not from when its pooled connection went
    // idle.
    config.reset_reader_on_write = true;
    Client::try_from(config)
}
