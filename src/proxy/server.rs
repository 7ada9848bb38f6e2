//! The client-facing server: the accept loop under a connection budget, TLS with its handshake
//! timeout, HTTP/1.1 or HTTP/2 by ALPN, and the per-connection shutdown that both draining and
//! a closed pinned upstream connection trigger. Body contents are not touched here.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::TokioIo;
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, watch};

use super::framing::FramingGuard;
use super::stack::connection_service;
use super::{ConnContext, Proxy};

/// Binds the client listener with a deep accept backlog.
pub fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(4096)
}

/// Accepts connections until `stop` turns true. Connections already open are told to finish
/// their in-flight requests and close; [`drain`] waits for them.
pub async fn serve(listener: TcpListener, proxy: Arc<Proxy>, mut stop: watch::Receiver<bool>) {
    loop {
        if *stop.borrow() {
            return;
        }
        // Wait for budget before accepting: beyond the limit, clients queue in the backlog
        // instead of being accepted and starved.
        let permit = tokio::select! {
            biased;
            _ = stop.changed() => return,
            permit = proxy.connections.clone().acquire_owned() => match permit {
                Ok(p) => p,
                Err(_) => return,
            },
        };
        let (tcp, peer) = tokio::select! {
            biased;
            _ = stop.changed() => return,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(error) => {
                    // EMFILE and friends: back off briefly instead of spinning.
                    tracing::warn!(%error, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        proxy.metrics.connections_accepted.inc();
        tokio::spawn(serve_connection(
            proxy.clone(),
            tcp,
            peer,
            stop.clone(),
            permit,
        ));
    }
}

/// Waits until every client connection has closed, or `grace` has passed. Returns whether all
/// closed in time.
pub async fn drain(proxy: &Proxy, grace: Duration) -> bool {
    let all = u32::try_from(proxy.max_connections).unwrap_or(u32::MAX);
    tokio::time::timeout(grace, proxy.connections.acquire_many(all))
        .await
        .is_ok_and(|r| r.is_ok())
}

struct ActiveGuard<'a>(&'a prometheus_client::metrics::gauge::Gauge);

impl Drop for ActiveGuard<'_> {
    fn drop(&mut self) {
        self.0.dec();
    }
}

async fn serve_connection(
    proxy: Arc<Proxy>,
    tcp: TcpStream,
    peer: SocketAddr,
    stop: watch::Receiver<bool>,
    _permit: OwnedSemaphorePermit,
) {
    let metrics = proxy.metrics.clone();
    metrics.connections_active.inc();
    let _active = ActiveGuard(&metrics.connections_active);
    let _ = tcp.set_nodelay(true);
    let state = proxy.state();
    match &state.tls_acceptor {
        Some(acceptor) => {
            let handshake =
                tokio::time::timeout(state.limits.tls_handshake_timeout, acceptor.accept(tcp))
                    .await;
            let tls = match handshake {
                Ok(Ok(tls)) => tls,
                Ok(Err(error)) => {
                    metrics.tls_handshake_failures.inc();
                    tracing::debug!(%error, "client TLS handshake failed");
                    return;
                }
                Err(_) => {
                    metrics.tls_handshake_failures.inc();
                    tracing::debug!("client TLS handshake timed out");
                    return;
                }
            };
            let alpn = tls.get_ref().1.alpn_protocol().map(<[u8]>::to_vec);
            let builder = state.server.clone();
            match alpn.as_deref() {
                Some(b"h2") => drive(&proxy, builder.http2_only(), tls, peer, true, stop).await,
                Some(b"http/1.1") => {
                    let guarded = guard(tls, &state.limits);
                    drive(&proxy, builder.http1_only(), guarded, peer, true, stop).await
                }
                _ => drive(&proxy, builder, guard(tls, &state.limits), peer, true, stop).await,
            }
        }
        None => {
            // Plaintext: HTTP/1.1 or HTTP/2 with prior knowledge; the guard steps aside for the
            // HTTP/2 preface.
            let builder = state.server.clone();
            drive(
                &proxy,
                builder,
                guard(tcp, &state.limits),
                peer,
                false,
                stop,
            )
            .await;
        }
    }
}

fn guard<IO>(io: IO, limits: &crate::config::LimitsConfig) -> FramingGuard<IO> {
    FramingGuard::new(io, limits.max_header_bytes, limits.max_header_count)
}

async fn drive<I>(
    proxy: &Arc<Proxy>,
    builder: hyper_util::server::conn::auto::Builder<hyper_util::rt::TokioExecutor>,
    io: I,
    peer: SocketAddr,
    tls: bool,
    mut stop: watch::Receiver<bool>,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let ctx = Arc::new(ConnContext::new(peer, tls));
    let service = TowerToHyperService::new(connection_service(proxy.clone(), ctx.clone()));
    let conn = builder.serve_connection(TokioIo::new(io), service);
    tokio::pin!(conn);
    let mut closing = *stop.borrow();
    if closing {
        conn.as_mut().graceful_shutdown();
    }
    loop {
        tokio::select! {
            result = conn.as_mut() => {
                if let Err(error) = result {
                    tracing::debug!(%error, "client connection ended with an error");
                }
                return;
            }
            _ = stop.changed(), if !closing => {
                closing = true;
                conn.as_mut().graceful_shutdown();
            }
            _ = ctx.upstream_closed.notified(), if !closing => {
                // The pinned upstream connection is gone; its authentication went with it.
                closing = true;
                conn.as_mut().graceful_shutdown();
            }
        }
    }
}
