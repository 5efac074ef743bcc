//! The origin side: what a connection to the origin is, how one is made, and the per-core pool
//! that keeps them alive between requests.
//!
//! - [`Upstream`] is built once at start-up on the main thread: it resolves the origin's host
//!   (a blocking DNS call that must never run on an I/O thread) and builds the rustls client
//!   configuration (webpki roots plus `--ca-file`).
//! - [`UpstreamConn`] is one connection (plain TCP or TLS) with its own read buffer. It is
//!   `!Send` and lives on the worker that made it.
//! - [`pool::Pool`] holds idle connections of one worker.
//!
//! Policy (see `proxy`): a connection that saw a timeout, cancellation, error or an unread body
//! is dropped, never pooled; monoio-rustls panics on a read after a dropped read, and a plain
//! socket would hand the next request stale bytes.

pub mod pool;
pub mod tls;

use std::io;
use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::Arc;
use std::time::Instant;

use bytes::BytesMut;
use monoio::buf::{IoBuf, IoBufMut, IoVecBuf, IoVecBufMut};
use monoio::io::{AsyncReadRent, AsyncWriteRent};
use monoio::net::TcpStream;
use monoio::BufResult;
use rustls::pki_types::ServerName;

use crate::config::{Config, Origin, Scheme};
use crate::error::ProxyError;

/// Capacity of an upstream connection's read buffer. Response heads must fit (the response head
/// limit is the same `--max-head-bytes`). 32 KiB takes a head and a 16 KiB body in one read,
/// so such a response goes to the client in one write straight from this buffer (a 16 KiB
/// buffer left its last bytes for a second read into a new buffer: a copy and an allocation).
pub const UPSTREAM_READ_BUF_BYTES: usize = 32 * 1024;

/// Everything needed to open connections to the origin; shared read-only by all workers.
pub struct Upstream {
    pub origin: Origin,
    /// Addresses the origin's host resolved to at start-up, tried in order.
    pub addrs: Vec<SocketAddr>,
    tls: Option<(monoio_rustls::TlsConnector, ServerName<'static>)>,
}

impl std::fmt::Debug for Upstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Upstream")
            .field("origin", &self.origin)
            .field("addrs", &self.addrs)
            .field("tls", &self.tls.is_some())
            .finish()
    }
}

impl Upstream {
    /// Resolves the origin and prepares TLS. Blocking: call on the main thread at start-up.
    /// Errors are one line naming the flag at fault.
    pub fn prepare(config: &Config) -> Result<Upstream, String> {
        let origin = config.origin.clone();
        let addrs: Vec<SocketAddr> = (origin.host.as_str(), origin.port)
            .to_socket_addrs()
            .map_err(|e| format!("--origin: cannot resolve {}: {e}", origin.host))?
            .collect();
        if addrs.is_empty() {
            return Err(format!("--origin: {} resolved to no address", origin.host));
        }
        let tls = match origin.scheme {
            Scheme::Http => None,
            Scheme::Https => {
                let client_config = tls::client_config(config.ca_file.as_deref())?;
                let name = ServerName::try_from(origin.host.clone()).map_err(|e| {
                    format!(
                        "--origin: {} is not a valid TLS server name: {e}",
                        origin.host
                    )
                })?;
                Some((
                    monoio_rustls::TlsConnector::from(Arc::new(client_config)),
                    name,
                ))
            }
        };
        Ok(Upstream { origin, addrs, tls })
    }

    /// Opens a new connection: TCP to the first address that accepts, then the TLS handshake
    /// for https origins. The caller bounds the whole thing with the connect timeout.
    pub async fn connect(
        &self,
        metrics: &std::rc::Rc<crate::metrics::Shard>,
    ) -> Result<UpstreamConn, ProxyError> {
        let mut last_err = None;
        let mut tcp = None;
        for addr in &self.addrs {
            match TcpStream::connect_addr(*addr).await {
                Ok(s) => {
                    tcp = Some(s);
                    break;
                }
                Err(e) => last_err = Some(e),
            }
        }
        let tcp = match tcp {
            Some(t) => t,
            None => {
                return Err(ProxyError::UpstreamConnect(last_err.unwrap_or_else(|| {
                    io::Error::new(io::ErrorKind::NotFound, "no origin address")
                })))
            }
        };
        // Small requests and responses must not wait for Nagle.
        let _ = tcp.set_nodelay(true);
        let stream = match &self.tls {
            None => UpstreamStream::Plain(tcp),
            Some((connector, name)) => match connector.connect(name.clone(), tcp).await {
                Ok(s) => UpstreamStream::Tls(Box::new(s)),
                Err(e) => return Err(ProxyError::UpstreamTls(e.into())),
            },
        };
        Ok(UpstreamConn {
            stream,
            buf: BytesMut::with_capacity(UPSTREAM_READ_BUF_BYTES),
            reused: false,
            idle_since: Instant::now(),
            counted: crate::metrics::Open::upstream(metrics),
        })
    }
}

/// A plain or TLS byte stream to the origin.
pub enum UpstreamStream {
    Plain(TcpStream),
    Tls(Box<monoio_rustls::ClientTlsStream<TcpStream>>),
}

impl AsyncReadRent for UpstreamStream {
    async fn read<T: IoBufMut>(&mut self, buf: T) -> BufResult<usize, T> {
        match self {
            UpstreamStream::Plain(s) => s.read(buf).await,
            UpstreamStream::Tls(s) => s.read(buf).await,
        }
    }

    async fn readv<T: IoVecBufMut>(&mut self, buf: T) -> BufResult<usize, T> {
        match self {
            UpstreamStream::Plain(s) => s.readv(buf).await,
            UpstreamStream::Tls(s) => s.readv(buf).await,
        }
    }
}

impl AsyncWriteRent for UpstreamStream {
    async fn write<T: IoBuf>(&mut self, buf: T) -> BufResult<usize, T> {
        match self {
            UpstreamStream::Plain(s) => s.write(buf).await,
            UpstreamStream::Tls(s) => s.write(buf).await,
        }
    }

    async fn writev<T: IoVecBuf>(&mut self, buf: T) -> BufResult<usize, T> {
        match self {
            UpstreamStream::Plain(s) => s.writev(buf).await,
            UpstreamStream::Tls(s) => s.writev(buf).await,
        }
    }

    async fn flush(&mut self) -> io::Result<()> {
        match self {
            UpstreamStream::Plain(s) => s.flush().await,
            UpstreamStream::Tls(s) => s.flush().await,
        }
    }

    async fn shutdown(&mut self) -> io::Result<()> {
        match self {
            UpstreamStream::Plain(s) => s.shutdown().await,
            UpstreamStream::Tls(s) => s.shutdown().await,
        }
    }
}

/// One connection to the origin and the bytes read from it but not yet consumed.
pub struct UpstreamConn {
    pub stream: UpstreamStream,
    /// Read buffer; holds the response head while it is parsed, then body bytes.
    pub buf: BytesMut,
    /// True when this connection came out of the pool (it served a request before). A reused
    /// connection may have been closed by the origin while idle: failing before any response
    /// byte, the request is retried once on a fresh connection.
    pub reused: bool,
    /// When the connection was last returned to the pool.
    pub idle_since: Instant,
    /// Counted in `sluice_upstream_connections` while open.
    pub counted: crate::metrics::Open,
}
