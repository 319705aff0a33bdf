//! One client connection: read requests, run them, write replies.
//!
//! Every complete request in the read buffer is run before the replies are written, so a
//! pipelined batch is answered with one write. Unparseable input gets Redis's protocol error
//! reply and closes only this connection.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use std::collections::VecDeque;

use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::watch;

use super::parser::{Limits, RequestParser};
use super::Context;
use crate::reply::Reply;
use crate::session::Session;

/// Most requests parsed into one batch.
const MAX_BATCH: usize = 1024;
/// Replies are written once this many bytes are pending, even mid-batch: a pipeline of
/// large replies is written as it goes (the session stops at this mark and resumes).
const FLUSH_AT: usize = 64 * 1024;
/// Buffers larger than this are released when idle.
const KEEP_BUFFER: usize = 1024 * 1024;
const INITIAL_BUFFER: usize = 16 * 1024;

/// Serves one client until it disconnects, sends QUIT, sends garbage, or the server stops.
pub async fn serve(
    stream: TcpStream,
    peer: String,
    ctx: Arc<Context>,
    stop: watch::Receiver<bool>,
) {
    ctx.connections_total.fetch_add(1, Ordering::Relaxed);
    ctx.connected.fetch_add(1, Ordering::Relaxed);
    if let Err(e) = serve_inner(stream, peer.clone(), ctx.clone(), stop).await {
        tracing::debug!(%peer, error = %e, "connection ended with an error");
    }
    ctx.connected.fetch_sub(1, Ordering::Relaxed);
}

/// Records the size of a reply buffer about to be written.
fn note_output(ctx: &Context, len: usize) {
    ctx.peak_output_buffer
        .fetch_max(len as u64, Ordering::Relaxed);
}

/// Tells a client over `max_clients` why it is refused, then closes.
pub async fn refuse(mut stream: TcpStream) {
    let mut out = BytesMut::new();
    Reply::error("ERR max number of clients reached").encode(Default::default(), &mut out);
    let _ = stream.write_all(&out).await;
}

async fn serve_inner(
    mut stream: TcpStream,
    peer: String,
    ctx: Arc<Context>,
    mut stop: watch::Receiver<bool>,
) -> std::io::Result<()> {
    stream.set_nodelay(true)?;
    let limits = Limits {
        max_bulk_len: ctx.config.max_bulk_len,
        max_multibulk_len: ctx.config.max_multibulk_len,
        max_inline_len: ctx.config.max_inline_len,
    };
    let mut session = Session::new(ctx.clone(), peer);
    let mut parser = RequestParser::new(limits);
    parser.set_authenticated(session.is_authenticated());
    let mut input = BytesMut::with_capacity(INITIAL_BUFFER);
    let mut output = BytesMut::with_capacity(INITIAL_BUFFER);
    let mut batch = VecDeque::new();
    loop {
        loop {
            // An authenticated client's pipelined requests are taken as one batch (its
            // writes share one commit); before AUTH, one at a time, since AUTH changes the
            // limits the next request is parsed with.
            let parsed = parser.parse(&mut input);
            let failed = match parsed {
                Ok(Some(args)) => {
                    batch.push_back(args);
                    if session.is_authenticated() && batch.len() < MAX_BATCH {
                        continue;
                    }
                    None
                }
                Ok(None) => None,
                Err(e) => Some(e),
            };
            let more = failed.is_none() && !batch.is_empty();
            while !batch.is_empty() || session.has_pending() {
                session
                    .handle_batch(&mut batch, &mut output, FLUSH_AT)
                    .await;
                if session.should_close() {
                    batch.clear();
                    break;
                }
                if output.len() >= FLUSH_AT {
                    note_output(&ctx, output.len());
                    stream.write_all(&output).await?;
                    output.clear();
                }
            }
            parser.set_authenticated(session.is_authenticated());
            if session.should_close() {
                note_output(&ctx, output.len());
                stream.write_all(&output).await?;
                return Ok(());
            }
            if let Some(e) = failed {
                Reply::error(e.to_string()).encode(session.protocol(), &mut output);
                note_output(&ctx, output.len());
                stream.write_all(&output).await?;
                return Ok(());
            }
            if !more {
                break;
            }
        }
        if !output.is_empty() {
            note_output(&ctx, output.len());
            stream.write_all(&output).await?;
            output.clear();
        }
        if output.capacity() > KEEP_BUFFER {
            output = BytesMut::with_capacity(INITIAL_BUFFER);
        }
        if input.is_empty() && input.capacity() > KEEP_BUFFER {
            input = BytesMut::with_capacity(INITIAL_BUFFER);
        }
        // Reserve once for a large bulk string being received, bounded by the limits.
        let want = parser
            .needed()
            .min(limits.max_bulk_len.saturating_add(2))
            .max(4096);
        input.reserve(want);
        tokio::select! {
            read = stream.read_buf(&mut input) => {
                if read? == 0 {
                    return Ok(());
                }
            }
            _ = stop.changed() => return Ok(()),
        }
    }
}
