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

use crate::node::Node;
use crate::resp::{Limits, Reply, RequestParser};
use crate::session::Session;

/// Most requests parsed into one batch.
const MAX_BATCH: usize = 1024;
/// Replies are written once this many bytes are pending, even mid-batch: a pipeline of
/// large replies is written as it goes (the session stops at this mark and resumes).
const FLUSH_AT: usize = 64 * 1024;
/// Buffers larger than this are released when idle.
const KEEP_BUFFER: usize = 1024 * 1024;
const INITIAL_BUFFER: usize = 16 * 1024;
/// Room for the next read: at least this much is made when less is left.
const MIN_READ: usize = 4096;
/// While a bulk string arrives, the buffer grows by at least this much (if the string still
/// needs that much).
const MIN_BULK_GROWTH: usize = 64 * 1024;

/// Makes room in `input` for the next read, when the parser still needs `needed` more bytes
/// (0: unknown).
///
/// The buffer grows with the bytes that actually arrive, never with the length a client
/// announces: a few `$536870912` headers cost a few KiB each, not 512 MiB. It grows only once
/// nearly full, by as much as it holds (at least [`MIN_BULK_GROWTH`], at most what is still
/// needed), so its capacity stays within about twice what has arrived, and a large value is
/// received in a logarithmic number of reallocations (`realloc`, which moves large blocks
/// without copying them on common allocators; at worst they copy less than twice the value).
fn make_room(input: &mut BytesMut, needed: usize) {
    let spare = input.capacity() - input.len();
    if spare >= MIN_READ || (needed > 0 && spare >= needed) {
        return;
    }
    let growth = needed.min(input.len().max(MIN_BULK_GROWTH)).max(MIN_READ);
    input.reserve(growth);
}

/// Serves one client until it disconnects, sends QUIT, sends garbage, or the server stops.
pub async fn serve(stream: TcpStream, peer: String, node: Arc<Node>, stop: watch::Receiver<bool>) {
    node.connections_total.fetch_add(1, Ordering::Relaxed);
    node.connected.fetch_add(1, Ordering::Relaxed);
    if let Err(e) = serve_inner(stream, peer.clone(), node.clone(), stop).await {
        tracing::debug!(%peer, error = %e, "connection ended with an error");
    }
    node.connected.fetch_sub(1, Ordering::Relaxed);
}

/// Records the size of a reply buffer about to be written.
fn note_output(node: &Node, len: usize) {
    let len = len as u64;
    // A load first: the peak rarely grows, and a read keeps the line shared between cores.
    if len > node.peak_output_buffer.load(Ordering::Relaxed) {
        node.peak_output_buffer.fetch_max(len, Ordering::Relaxed);
    }
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
    node: Arc<Node>,
    mut stop: watch::Receiver<bool>,
) -> std::io::Result<()> {
    stream.set_nodelay(true)?;
    let limits = Limits {
        max_bulk_len: node.config.max_bulk_len,
        max_multibulk_len: node.config.max_multibulk_len,
        max_inline_len: node.config.max_inline_len,
    };
    let mut session = Session::new(node.clone(), peer);
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
                    note_output(&node, output.len());
                    stream.write_all(&output).await?;
                    output.clear();
                }
            }
            parser.set_authenticated(session.is_authenticated());
            if session.should_close() {
                note_output(&node, output.len());
                stream.write_all(&output).await?;
                return Ok(());
            }
            if let Some(e) = failed {
                Reply::error(e.to_string()).encode(session.protocol(), &mut output);
                note_output(&node, output.len());
                stream.write_all(&output).await?;
                return Ok(());
            }
            if !more {
                break;
            }
        }
        if !output.is_empty() {
            note_output(&node, output.len());
            stream.write_all(&output).await?;
            output.clear();
        }
        if output.capacity() > KEEP_BUFFER {
            output = BytesMut::with_capacity(INITIAL_BUFFER);
        }
        if input.is_empty() && input.capacity() > KEEP_BUFFER {
            input = BytesMut::with_capacity(INITIAL_BUFFER);
        }
        make_room(&mut input, parser.needed());
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Receives a bulk string of `len` bytes (plus CRLF) in reads of at most `read` bytes,
    /// the way `serve_inner` does; checks memory at every step and returns an upper bound of
    /// the bytes copied by reallocations (every move of the buffer counted as a copy).
    fn receive(len: usize, read: usize) -> usize {
        let total = len + 2;
        let mut input = BytesMut::with_capacity(INITIAL_BUFFER);
        let piece = vec![7u8; read];
        let mut copied = 0;
        while input.len() < total {
            let before = input.as_ptr();
            let needed = total - input.len();
            make_room(&mut input, needed);
            if input.as_ptr() != before {
                copied += input.len();
            }
            let room = input.capacity() - input.len();
            assert!(room > 0, "no room made at {} bytes", input.len());
            assert!(
                input.capacity() <= 2 * input.len() + 2 * MIN_BULK_GROWTH,
                "{} bytes of buffer for {} received",
                input.capacity(),
                input.len()
            );
            let n = read.min(room).min(total - input.len());
            input.extend_from_slice(&piece[..n]);
        }
        copied
    }

    #[test]
    fn an_announced_length_alone_reserves_one_bounded_chunk() {
        let mut input = BytesMut::with_capacity(INITIAL_BUFFER);
        input.extend_from_slice(b"the first bytes");
        // Like a client that sent `$536870912` and nothing more yet.
        make_room(&mut input, (512 << 20) + 2);
        assert!(input.capacity() <= INITIAL_BUFFER, "{}", input.capacity());
        input.resize(input.capacity(), 0);
        make_room(&mut input, 512 << 20);
        assert_eq!(input.capacity(), INITIAL_BUFFER + MIN_BULK_GROWTH);
    }

    #[test]
    fn a_large_value_received_in_small_reads_is_copied_less_than_twice() {
        for (len, read) in [
            (100 << 20, 1500),
            (3 << 20, 64 << 10),
            (70_000, 1),
            (10, 4096),
        ] {
            let copied = receive(len, read);
            assert!(copied < 2 * len, "{copied} bytes copied to receive {len}");
        }
    }

    #[test]
    fn between_requests_a_plain_read_is_made_room_for() {
        let mut input = BytesMut::new();
        make_room(&mut input, 0);
        assert!(input.capacity() >= MIN_READ);
        // Room enough already: nothing moves.
        let mut input = BytesMut::with_capacity(INITIAL_BUFFER);
        let before = input.as_ptr();
        make_room(&mut input, 1 << 20);
        assert_eq!(input.as_ptr(), before);
    }
}
