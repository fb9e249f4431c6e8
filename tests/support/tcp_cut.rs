//! A TCP forwarder that a test can cut, shared by the test binaries.

use tokio::task::JoinHandle;

/// A TCP forwarder in front of a real server that a test can cut: while cut, new connections
/// are refused and the open ones are closed, exactly what a client sees when the server's host
/// goes away. Used for Redis outages.
pub struct TcpCut {
    pub addr: std::net::SocketAddr,
    target: String,
    task: Option<JoinHandle<()>>,
}

impl TcpCut {
    /// Starts forwarding a fresh local port to `target` (`host:port`).
    pub async fn start(target: &str) -> Self {
        Self::start_on("127.0.0.1:0", target).await
    }

    /// Starts forwarding `bind` (e.g. an address of a veth link, port 0) to `target`.
    pub async fn start_on(bind: &str, target: &str) -> Self {
        let listener = tokio::net::TcpListener::bind(bind).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mut cut = Self {
            addr,
            target: target.to_owned(),
            task: None,
        };
        cut.serve(listener);
        cut
    }

    fn serve(&mut self, listener: tokio::net::TcpListener) {
        let target = self.target.clone();
        self.task = Some(tokio::spawn(async move {
            let mut pipes = tokio::task::JoinSet::new();
            while let Ok((mut inbound, _)) = listener.accept().await {
                let target = target.clone();
                // Dropping the set (when this task is aborted) closes every open connection.
                pipes.spawn(async move {
                    if let Ok(mut outbound) = tokio::net::TcpStream::connect(target).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
            }
        }));
    }

    /// Closes every connection and refuses new ones.
    pub async fn cut(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
            let _ = task.await;
        }
    }

    /// Accepts connections again on the same port.
    pub async fn restore(&mut self) {
        let listener = tokio::net::TcpListener::bind(self.addr).await.unwrap();
        self.serve(listener);
    }
}
