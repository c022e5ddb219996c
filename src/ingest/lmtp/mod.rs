//! The LMTP listener (RFC 2033) of `rebound serve`: Postfix delivers bounces to it as a transport
//! (`lmtp:inet:127.0.0.1:2424`). This file owns the socket: accepting, the connection limit and the
//! shutdown; [`session`] speaks the protocol on one connection.
//!
//! Shutdown: when the shutdown signal fires the listener closes at once, sessions waiting for a command
//! say 421 and close, sessions in the middle of a message finish it (reply after commit), and whatever is
//! still running after `shutdown_grace` is aborted; its message was never acknowledged, so the MTA retries.

pub mod session;

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinSet;

use super::writer::Writer;
use crate::config::{AllowList, LmtpConfig};

/// Bind the LMTP socket. Warns when the address is not a loopback one: LMTP has no authentication, so
/// anyone who can reach the port can insert messages.
pub async fn bind(listen: SocketAddr) -> std::io::Result<TcpListener> {
    let listener = TcpListener::bind(listen).await?;
    if !listen.ip().is_loopback() {
        tracing::warn!(%listen, "LMTP is listening on a non-loopback address and has no authentication; \
                                 restrict access with a firewall or listen on 127.0.0.1");
    }
    Ok(listener)
}

/// Serve LMTP on `listener` until `shutdown` turns true, then finish the sessions in flight (at most
/// `config.shutdown_grace`) and return. Clients outside `allow` are told 421 4.7.1 and closed.
pub async fn serve(
    listener: TcpListener,
    config: LmtpConfig,
    allow: AllowList,
    writer: Writer,
    mut shutdown: watch::Receiver<bool>,
) {
    let grace = config.shutdown_grace;
    let limit = Arc::new(Semaphore::new(config.max_connections));
    let context = Arc::new(session::Context::new(config, writer));
    let session_shutdown = shutdown.clone();
    let mut sessions = JoinSet::new();
    loop {
        tokio::select! {
            _ = shutdown.wait_for(|stop| *stop) => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) if !allow.allows(peer.ip()) => {
                    tracing::warn!(%peer, "LMTP connection from a client outside allow_networks refused");
                    refuse(stream, b"421 4.7.1 Client host not allowed, closing connection\r\n");
                }
                Ok((stream, peer)) => match limit.clone().try_acquire_owned() {
                    Ok(permit) => {
                        let context = context.clone();
                        let shutdown = session_shutdown.clone();
                        sessions.spawn(async move {
                            session::run(stream, peer, &context, shutdown).await;
                            drop(permit);
                        });
                    }
                    Err(_) => {
                        tracing::warn!(%peer, "too many LMTP connections; refusing one");
                        refuse(stream, b"421 4.3.2 Too many connections, try again later\r\n");
                    }
                },
                Err(e) => {
                    // Usually out of file descriptors: back off instead of spinning.
                    tracing::error!(error = %e, "cannot accept an LMTP connection");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                }
            },
            Some(done) = sessions.join_next(), if !sessions.is_empty() => log_session_end(done),
        }
    }
    drop(listener);
    tracing::info!(sessions = sessions.len(), "LMTP listener closed; finishing messages in flight");
    let deadline = tokio::time::sleep(grace);
    tokio::pin!(deadline);
    loop {
        tokio::select! {
            done = sessions.join_next() => match done {
                Some(done) => log_session_end(done),
                None => break,
            },
            _ = &mut deadline => {
                tracing::warn!(sessions = sessions.len(), ?grace,
                               "sessions still busy after the shutdown grace; closing them unacknowledged");
                sessions.abort_all();
                while sessions.join_next().await.is_some() {}
                break;
            }
        }
    }
}

/// Say `reply` and close, on a task of its own so a client that does not read cannot hold the listener.
fn refuse(mut stream: tokio::net::TcpStream, reply: &'static [u8]) {
    tokio::spawn(async move {
        let _ = tokio::time::timeout(std::time::Duration::from_secs(10), async {
            let _ = stream.write_all(reply).await;
            let _ = stream.shutdown().await;
        })
        .await;
    });
}

fn log_session_end(done: Result<(), tokio::task::JoinError>) {
    if let Err(e) = done
        && e.is_panic()
    {
        tracing::error!(error = %e, "an LMTP session panicked");
    }
}
