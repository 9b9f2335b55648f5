//! A TCP proxy in front of the registry that a test can take down and bring back, for the
//! registry-outage drill: while it is down, connections are refused, as from a registry
//! that is not running.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::Mutex;
use tokio::task::JoinHandle;

pub struct Proxy {
    pub address: SocketAddr,
    upstream: String,
    accept: Mutex<Option<JoinHandle<()>>>,
    connections: Arc<Mutex<Vec<JoinHandle<()>>>>,
}

fn bind(address: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = TcpSocket::new_v4()?;
    // Coming back on the same port right after going down.
    socket.set_reuseaddr(true)?;
    socket.bind(address)?;
    socket.listen(128)
}

impl Proxy {
    /// Starts forwarding a free loopback port to `upstream` (`host:port`).
    pub async fn start(upstream: &str) -> std::io::Result<Proxy> {
        let listener = bind("127.0.0.1:0".parse().unwrap())?;
        let proxy = Proxy {
            address: listener.local_addr()?,
            upstream: upstream.to_string(),
            accept: Mutex::new(None),
            connections: Arc::default(),
        };
        proxy.serve(listener).await;
        Ok(proxy)
    }

    pub fn host(&self) -> String {
        self.address.to_string()
    }

    async fn serve(&self, listener: TcpListener) {
        let upstream = self.upstream.clone();
        let connections = self.connections.clone();
        let task = tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                let upstream = upstream.clone();
                let connection = tokio::spawn(async move {
                    if let Ok(mut outbound) = TcpStream::connect(&upstream).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
                connections.lock().await.push(connection);
            }
        });
        *self.accept.lock().await = Some(task);
    }

    /// Stops listening and cuts every open connection.
    pub async fn down(&self) {
        if let Some(task) = self.accept.lock().await.take() {
            task.abort();
            let _ = task.await;
        }
        for connection in self.connections.lock().await.drain(..) {
            connection.abort();
        }
    }

    /// Listens again on the same address.
    pub async fn up(&self) -> std::io::Result<()> {
        let listener = bind(self.address)?;
        self.serve(listener).await;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn forwards_refuses_while_down_and_comes_back() {
        let upstream = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let upstream_address = upstream.local_addr().unwrap().to_string();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = upstream.accept().await {
                tokio::spawn(async move {
                    let mut buf = [0u8; 5];
                    if s.read_exact(&mut buf).await.is_ok() {
                        let _ = s.write_all(&buf).await;
                    }
                });
            }
        });
        let proxy = Proxy::start(&upstream_address).await.unwrap();
        let echo = |address: SocketAddr| async move {
            let mut s = TcpStream::connect(address).await?;
            s.write_all(b"hello").await?;
            let mut buf = [0u8; 5];
            s.read_exact(&mut buf).await?;
            Ok::<_, std::io::Error>(buf)
        };
        assert_eq!(&echo(proxy.address).await.unwrap(), b"hello");
        proxy.down().await;
        let refused = TcpStream::connect(proxy.address).await.unwrap_err();
        assert_eq!(refused.kind(), std::io::ErrorKind::ConnectionRefused);
        proxy.up().await.unwrap();
        assert_eq!(&echo(proxy.address).await.unwrap(), b"hello");
    }
}
