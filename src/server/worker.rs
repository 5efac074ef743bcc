//! Per-core state: everything one worker thread's tasks share, without locks.
//!
//! A [`Worker`] lives in an `Rc` on its own thread (monoio tasks are `!Send`): the read-only
//! configuration and origin description (`Arc`s shared with the other workers), this core's
//! upstream keep-alive pool, and this core's pool of client read buffers.

use std::cell::RefCell;
use std::sync::Arc;

use bytes::BytesMut;

use crate::config::Config;
use crate::http::HeadLimits;
use crate::upstream::pool::Pool;
use crate::upstream::Upstream;

/// Initial capacity of a client connection's read buffer. Typical request heads are well under
/// 1 KiB; the buffer grows (up to `--max-head-bytes` for heads) only when needed.
pub const CLIENT_READ_BUF_BYTES: usize = 4 * 1024;
/// Client read buffers kept for reuse per worker; beyond this, returned buffers are freed.
pub const MAX_POOLED_CLIENT_BUFS: usize = 1024;

pub struct Worker {
    pub id: usize,
    pub config: Arc<Config>,
    pub upstream: Arc<Upstream>,
    pub pool: RefCell<Pool>,
    pub limits: HeadLimits,
    bufs: RefCell<Vec<BytesMut>>,
}

impl Worker {
    pub fn new(id: usize, config: Arc<Config>, upstream: Arc<Upstream>) -> Worker {
        let limits = HeadLimits {
            max_head_bytes: config.max_head_bytes,
            max_headers: config.max_headers,
        };
        let pool = Pool::new(config.upstream_max_idle, config.timeouts.upstream_idle);
        Worker {
            id,
            config,
            upstream,
            pool: RefCell::new(pool),
            limits,
            bufs: RefCell::new(Vec::new()),
        }
    }

    /// A read buffer for a new client connection, reused when one is free.
    pub fn take_buf(&self) -> BytesMut {
        self.bufs
            .borrow_mut()
            .pop()
            .unwrap_or_else(|| BytesMut::with_capacity(CLIENT_READ_BUF_BYTES))
    }

    /// Gives a client read buffer back when its connection ends.
    pub fn give_buf(&self, mut buf: BytesMut) {
        buf.clear();
        // A buffer whose memory is still shared with a frozen head, or that shrank below the
        // standard size, is not worth keeping.
        if buf.capacity() < CLIENT_READ_BUF_BYTES {
            return;
        }
        let mut bufs = self.bufs.borrow_mut();
        if bufs.len() < MAX_POOLED_CLIENT_BUFS {
            bufs.push(buf);
        }
    }
}
