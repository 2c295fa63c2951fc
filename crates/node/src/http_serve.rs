//! The node's HTTP server loop: axum's router on hyper's HTTP/1.1 connections (with upgrades,
//! for WebSockets), each connection bounded in how long it may send no request. `axum::serve`
//! sets no such bound: a client could hold any number of silent connections, each an open
//! file, until the node could accept no more.

use axum::Router;
use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::response::IntoResponse;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::net::TcpListener;
use tokio::sync::watch;

/// How long a connection may go without a request's head arriving — a new connection, or a
/// kept-alive one between requests — before the node closes it. Longer than the idle time of
/// the internal client's pooled connections (`client.rs`, `POOL_IDLE`), so that the client,
/// not the server, closes an idle connection, and no request is sent on one the server is
/// closing.
pub(crate) const HTTP_IDLE: Duration = Duration::from_secs(120);

/// How long a new connection may stay silent before its first byte: a client that connects
/// and sends nothing is let go long before `HTTP_IDLE` (one client holding idle connections
/// used up every open file of a node — its witness too — for two minutes at a time).
pub(crate) const FIRST_BYTE_WAIT: Duration = Duration::from_secs(10);

/// How long a request's body may take to arrive, from its head on. Every body the node takes
/// is small (at most `server::REQUEST_BYTES_MAX`, 1 MiB); without a bound, a client sending a
/// byte now and then holds its connection and its handler for good.
pub(crate) const REQUEST_BODY_WAIT: Duration = Duration::from_secs(30);

/// How long a connection's writes may make no progress — its client taking in nothing — before
/// the node closes it. A client that asks for an answer larger than the kernel buffers for it
/// (a seed streamed to a mirror whose process froze) and reads none of it would otherwise hold
/// the connection, the answer's handler and what it had queued for good. (An answer the kernel
/// takes whole is done for the node: its connection is then closed as an idle one.)
pub(crate) const WRITE_STALL_MAX: Duration = Duration::from_secs(60);

/// The bounds a connection is served within.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Bounds {
    /// No request head for this long: closed.
    pub(crate) idle: Duration,
    /// A request's body not all there this long after its head: refused, and closed.
    pub(crate) body: Duration,
    /// Writes that make no progress for this long: closed.
    pub(crate) write_stall: Duration,
    /// A new connection whose first byte has not come this long after it opened: closed.
    pub(crate) first_byte: Duration,
    /// Connections open at once from one client address (IPv6: its /64), beyond which a new
    /// one is closed as it comes; addresses the node exempts (its deployment's nodes) are not
    /// counted.
    pub(crate) per_client: usize,
}

/// At most this many connections at once from one client address: one client opening
/// connections faster than they are let go held every open file of a node (and of the witness
/// it hosts). Generous for a client behind an address shared by many (a NAT).
pub(crate) const CONNECTIONS_PER_CLIENT: usize = 1024;

/// A node's bounds.
pub(crate) const NODE_BOUNDS: Bounds = Bounds {
    idle: HTTP_IDLE,
    body: REQUEST_BODY_WAIT,
    write_stall: WRITE_STALL_MAX,
    first_byte: FIRST_BYTE_WAIT,
    per_client: CONNECTIONS_PER_CLIENT,
};

/// The connections open per client address, for `Bounds::per_client`.
struct Clients {
    max: usize,
    exempt: HashSet<IpAddr>,
    open: Mutex<HashMap<IpAddr, usize>>,
    /// When a refusal was last logged, per address: once a minute at most.
    logged: Mutex<HashMap<IpAddr, Instant>>,
}

/// One connection counted against its client's address, until it is dropped.
struct Counted {
    clients: Arc<Clients>,
    client: IpAddr,
}

impl Clients {
    /// Counts a new connection from `peer`, or None when its address has `max` open already.
    fn admit(self: &Arc<Self>, peer: IpAddr) -> Option<Option<Counted>> {
        if self.exempt.contains(&peer) || self.exempt.contains(&crate::sign_in::counted(peer)) {
            return Some(None);
        }
        let client = crate::sign_in::counted(peer);
        let mut open = self.open.lock().expect("connections per client");
        let n = open.entry(client).or_insert(0);
        if *n >= self.max {
            let n = *n;
            drop(open);
            let mut logged = self.logged.lock().expect("refusals logged");
            let now = Instant::now();
            if logged
                .get(&client)
                .is_none_or(|at| now.duration_since(*at) >= Duration::from_secs(60))
            {
                logged.retain(|_, at| now.duration_since(*at) < Duration::from_secs(60));
                logged.insert(client, now);
                tracing::warn!(%client, open = n, max = self.max, "a client holds as many connections as it may: its new ones are closed (logged once a minute)");
            }
            return None;
        }
        *n += 1;
        Some(Some(Counted {
            clients: self.clone(),
            client,
        }))
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        let mut open = self.clients.open.lock().expect("connections per client");
        if let Some(n) = open.get_mut(&self.client) {
            *n -= 1;
            if *n == 0 {
                open.remove(&self.client);
            }
        }
    }
}

/// A timer set only when first asked about (most requests and writes never wait): true once
/// `at` has passed; `at` is read when the timer is set.
fn passed(
    timer: &mut Option<std::pin::Pin<Box<tokio::time::Sleep>>>,
    at: impl FnOnce() -> tokio::time::Instant,
    cx: &mut std::task::Context<'_>,
) -> bool {
    timer
        .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(at())))
        .as_mut()
        .poll(cx)
        .is_ready()
}

/// A connection whose writes fail once they have made no progress for `bound`: hyper sets no
/// bound on writing an answer (nor a WebSocket on its frames), and a client that reads nothing
/// would hold the connection, and what is queued on it, for as long as it keeps it.
struct StallBound<T> {
    io: T,
    bound: Duration,
    stalled: Option<std::pin::Pin<Box<tokio::time::Sleep>>>,
}

impl<T> StallBound<T> {
    /// What a write, a vectored write or a flush gave: done resets the wait; a wait that has
    /// lasted `bound` becomes an error.
    fn after<R>(
        &mut self,
        cx: &mut std::task::Context<'_>,
        polled: std::task::Poll<std::io::Result<R>>,
    ) -> std::task::Poll<std::io::Result<R>> {
        if polled.is_ready() {
            self.stalled = None;
            return polled;
        }
        let bound = self.bound;
        if !passed(
            &mut self.stalled,
            || tokio::time::Instant::now() + bound,
            cx,
        ) {
            return std::task::Poll::Pending;
        }
        std::task::Poll::Ready(Err(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            format!("the client took nothing in for {} ms", bound.as_millis()),
        )))
    }
}

impl<T: tokio::io::AsyncRead + Unpin> tokio::io::AsyncRead for StallBound<T> {
    fn poll_read(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.get_mut().io).poll_read(cx, buf)
    }
}

impl<T: tokio::io::AsyncWrite + Unpin> tokio::io::AsyncWrite for StallBound<T> {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        let polled = std::pin::Pin::new(&mut this.io).poll_write(cx, buf);
        this.after(cx, polled)
    }

    fn poll_write_vectored(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> std::task::Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        let polled = std::pin::Pin::new(&mut this.io).poll_write_vectored(cx, bufs);
        this.after(cx, polled)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let this = self.get_mut();
        let polled = std::pin::Pin::new(&mut this.io).poll_flush(cx);
        this.after(cx, polled)
    }

    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

/// A request's body that ends in an error once its wait (`REQUEST_BODY_WAIT` in a node) has
/// passed since its head arrived. The timer is set only once a read of the body has to wait:
/// a handler that reads none, or a body already there, costs none.
struct BodyDeadline<B> {
    inner: B,
    head: tokio::time::Instant,
    wait: Duration,
    sleep: Option<std::pin::Pin<Box<tokio::time::Sleep>>>,
}

impl<B> http_body::Body for BodyDeadline<B>
where
    B: http_body::Body<Data = bytes::Bytes> + Unpin,
    B::Error: Into<axum::BoxError>,
{
    type Data = bytes::Bytes;
    type Error = axum::BoxError;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<bytes::Bytes>, axum::BoxError>>> {
        let this = self.get_mut();
        if let std::task::Poll::Ready(frame) = std::pin::Pin::new(&mut this.inner).poll_frame(cx) {
            return std::task::Poll::Ready(frame.map(|f| f.map_err(Into::into)));
        }
        let deadline = this.head + this.wait;
        if !passed(&mut this.sleep, || deadline, cx) {
            return std::task::Poll::Pending;
        }
        std::task::Poll::Ready(Some(Err(format!(
            "the request's body did not arrive within {} ms of its head",
            this.wait.as_millis()
        )
        .into())))
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// Serves `app` on `listener` until `stopping` turns true: then accepts nothing more and
/// returns once every connection has finished its request under way. A connection that sends
/// no request head for `idle` is closed; a request's handler (a long poll, a streamed full
/// copy) and an upgraded WebSocket are not bounded by it. Handlers see the peer's address as
/// `ConnectInfo<SocketAddr>`.
#[cfg(test)]
pub(crate) async fn serve(
    listener: TcpListener,
    app: Router,
    bounds: Bounds,
    stopping: watch::Receiver<bool>,
) {
    serve_exempting(listener, app, bounds, HashSet::new(), stopping).await
}

/// `serve`, with the addresses whose connections are not counted against `Bounds::per_client`.
pub(crate) async fn serve_exempting(
    listener: TcpListener,
    app: Router,
    bounds: Bounds,
    exempt: HashSet<IpAddr>,
    mut stopping: watch::Receiver<bool>,
) {
    let clients = Arc::new(Clients {
        max: bounds.per_client,
        exempt,
        open: Mutex::new(HashMap::new()),
        logged: Mutex::new(HashMap::new()),
    });
    // HTTP/1.1 only (every client of a node speaks it): hyper's automatic version detection
    // would wait for a silent connection's first bytes with no bound at all.
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(bounds.idle);
    // Each connection's task holds a receiver: all have ended once `closed` resolves.
    let (open_tx, open_rx) = watch::channel(());
    // Accepts refused in a row (out of open files, most often): logged once, then once more
    // when accepting again, with how many (it logged each, twenty a second).
    let mut refused = 0u64;
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    if refused == 0 {
                        tracing::warn!("cannot accept a connection: {e}; trying again every 50 ms");
                    }
                    refused += 1;
                    // Wait a little rather than spin.
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = stopped(&mut stopping) => break,
        };
        if refused > 0 {
            tracing::warn!("accepting connections again, after {refused} refused tries");
            refused = 0;
        }
        let Some(counted) = clients.admit(peer.ip()) else {
            drop(stream);
            continue;
        };
        let app = app.clone();
        let service = tower::service_fn(move |mut req: hyper::Request<Incoming>| {
            req.extensions_mut().insert(ConnectInfo(peer));
            let head = tokio::time::Instant::now();
            let req = req.map(|inner| {
                Body::new(BodyDeadline {
                    inner,
                    head,
                    wait: bounds.body,
                    sleep: None,
                })
            });
            tower::ServiceExt::oneshot(app.clone(), req)
        });
        let builder = builder.clone();
        let (mut stopping, open) = (stopping.clone(), open_rx.clone());
        tokio::spawn(async move {
            // A connection that says nothing at first is let go (`FIRST_BYTE_WAIT`).
            let mut first = [0u8; 1];
            tokio::select! {
                peeked = tokio::time::timeout(bounds.first_byte.min(bounds.idle), stream.peek(&mut first)) => {
                    if !matches!(peeked, Ok(Ok(n)) if n > 0) {
                        return;
                    }
                }
                () = stopped(&mut stopping) => return,
            }
            let conn = builder
                .serve_connection(
                    TokioIo::new(StallBound {
                        io: stream,
                        bound: bounds.write_stall,
                        stalled: None,
                    }),
                    TowerToHyperService::new(service),
                )
                .with_upgrades();
            tokio::pin!(conn);
            tokio::select! {
                r = conn.as_mut() => {
                    if let Err(e) = r {
                        tracing::debug!("connection from {peer}: {e}");
                    }
                }
                () = stopped(&mut stopping) => {
                    conn.as_mut().graceful_shutdown();
                    let _ = conn.await;
                }
            }
            drop(open);
            drop(counted);
        });
    }
    drop(listener);
    drop(open_rx);
    open_tx.closed().await;
}

/// Runs the request's handler on a task of its own, so that it runs to its end even when the
/// client goes away meanwhile. hyper drops a request's future when its connection closes: a
/// handler that changes a copy (a restore, a failover) would stop at whatever `.await` it was
/// in, its work in `spawn_blocking` going on without it — and the copy's operations lock, held
/// by the dropped future, free for a second operation on the same copy while the first still
/// ran (a procedure's CLI killed mid-step, then run again, did exactly that). The layer of every
/// route that changes a copy, a role, a configuration or the witness's records
/// (`server::router`).
pub(crate) async fn to_completion(
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    match tokio::spawn(next.run(req)).await {
        Ok(response) => response,
        Err(e) => crate::error::ApiError::unavailable(format!("the operation ended early: {e}"))
            .into_response(),
    }
}

/// Resolves once `stopping` is true (or its sender is gone).
pub(crate) async fn stopped(stopping: &mut watch::Receiver<bool>) {
    let _ = stopping.wait_for(|s| *s).await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::routing::get;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A server on a free port answering `GET /peer` with the peer's address as it saw it.
    async fn start(idle: Duration) -> (String, watch::Sender<bool>, tokio::task::JoinHandle<()>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let app =
            Router::new().route(
                "/peer",
                get(
                    |ConnectInfo(peer): ConnectInfo<std::net::SocketAddr>| async move {
                        peer.to_string()
                    },
                ),
            );
        let (stop, stopping) = watch::channel(false);
        let bounds = Bounds {
            idle,
            ..NODE_BOUNDS
        };
        let server = tokio::spawn(serve(listener, app, bounds, stopping));
        (addr, stop, server)
    }

    /// Reads until the peer closes the connection, with a deadline; what was read.
    async fn until_closed(conn: &mut tokio::net::TcpStream) -> String {
        let mut got = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(10), conn.read_to_end(&mut got));
        read.await
            .expect("the server closed the connection within 10 s")
            .unwrap();
        String::from_utf8_lossy(&got).to_string()
    }

    #[tokio::test]
    async fn a_connection_that_sends_no_request_is_closed_and_one_that_does_is_answered() {
        let (addr, _stop, _server) = start(Duration::from_millis(300)).await;
        // Silent from the start: closed.
        let mut silent = tokio::net::TcpStream::connect(&addr).await.unwrap();
        assert_eq!(until_closed(&mut silent).await, "");
        // A request is answered, with the peer's address; the connection, kept alive, is then
        // closed once it stays silent.
        let mut conn = tokio::net::TcpStream::connect(&addr).await.unwrap();
        let me = conn.local_addr().unwrap().to_string();
        conn.write_all(b"GET /peer HTTP/1.1\r\nhost: x\r\n\r\n")
            .await
            .unwrap();
        let answer = until_closed(&mut conn).await;
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        assert!(answer.ends_with(&me), "the peer is {me}: {answer}");
    }

    /// A new connection that sends nothing is let go after `first_byte`, well before the idle
    /// bound of a kept-alive one; one that sends a request late within it is served.
    #[tokio::test]
    async fn a_new_connection_silent_past_its_first_byte_bound_is_closed() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let app = Router::new().route("/peer", get(|| async { "ok" }));
        let (_stop, stopping) = watch::channel(false);
        let bounds = Bounds {
            first_byte: Duration::from_millis(300),
            ..NODE_BOUNDS
        };
        let _server = tokio::spawn(serve(listener, app, bounds, stopping));
        let mut silent = tokio::net::TcpStream::connect(&addr).await.unwrap();
        // `until_closed` gives up after 10 s; the idle bound is 120 s.
        assert_eq!(until_closed(&mut silent).await, "");
        let mut late = tokio::net::TcpStream::connect(&addr).await.unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
        late.write_all(b"GET /peer HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
            .await
            .unwrap();
        let answer = until_closed(&mut late).await;
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    }

    /// One client address holds at most `per_client` connections: a new one past it is closed
    /// as it comes (one client held every open file of a node), an exempt address is not
    /// counted, and a connection let go makes room again.
    #[tokio::test]
    async fn a_client_holds_at_most_its_share_of_connections() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let app = Router::new().route("/peer", get(|| async { "ok" }));
        let (_stop, stopping) = watch::channel(false);
        let bounds = Bounds {
            per_client: 2,
            ..NODE_BOUNDS
        };
        tokio::spawn(serve(listener, app.clone(), bounds, stopping.clone()));
        let ask = |mut conn: tokio::net::TcpStream| async move {
            // A connection closed as it came may refuse the request itself.
            let sent = conn
                .write_all(b"GET /peer HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
                .await;
            let mut got = Vec::new();
            if sent.is_ok() {
                let read =
                    tokio::time::timeout(Duration::from_secs(10), conn.read_to_end(&mut got));
                // Reset, for one closed as it came with the request unread.
                let _ = read.await.expect("closed within 10 s");
            }
            String::from_utf8_lossy(&got).to_string()
        };
        let held: Vec<_> =
            futures_util::future::join_all((0..2).map(|_| tokio::net::TcpStream::connect(&addr)))
                .await
                .into_iter()
                .map(Result::unwrap)
                .collect();
        // Both counted once accepted.
        tokio::time::sleep(Duration::from_millis(200)).await;
        let third = tokio::net::TcpStream::connect(&addr).await.unwrap();
        assert_eq!(ask(third).await, "", "closed as it came");
        let mut held = held.into_iter();
        let first = held.next().unwrap();
        assert!(ask(first).await.starts_with("HTTP/1.1 200"));
        tokio::time::sleep(Duration::from_millis(200)).await;
        let again = tokio::net::TcpStream::connect(&addr).await.unwrap();
        assert!(ask(again).await.starts_with("HTTP/1.1 200"), "room again");
        // An exempt address is not counted.
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let exempt_addr = listener.local_addr().unwrap().to_string();
        let exempt = [std::net::IpAddr::from([127, 0, 0, 1])].into();
        tokio::spawn(serve_exempting(listener, app, bounds, exempt, stopping));
        let mut many = Vec::new();
        for _ in 0..4 {
            many.push(tokio::net::TcpStream::connect(&exempt_addr).await.unwrap());
        }
        for conn in many {
            assert!(ask(conn).await.starts_with("HTTP/1.1 200"));
        }
    }

    #[tokio::test]
    async fn a_request_whose_body_does_not_arrive_in_time_is_refused_and_its_connection_closed() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let app = Router::new().route(
            "/echo",
            axum::routing::post(|body: String| async move { body }),
        );
        let (_stop, stopping) = watch::channel(false);
        let bounds = Bounds {
            body: Duration::from_millis(300),
            ..NODE_BOUNDS
        };
        tokio::spawn(serve(listener, app, bounds, stopping));
        // A body sent whole is answered.
        let mut conn = tokio::net::TcpStream::connect(&addr).await.unwrap();
        conn.write_all(b"POST /echo HTTP/1.1\r\nhost: x\r\ncontent-length: 5\r\nconnection: close\r\n\r\nhello")
            .await
            .unwrap();
        let answer = until_closed(&mut conn).await;
        assert!(
            answer.starts_with("HTTP/1.1 200") && answer.ends_with("hello"),
            "{answer}"
        );
        // Three bytes of five, then nothing: refused once the wait has passed, and closed.
        let mut slow = tokio::net::TcpStream::connect(&addr).await.unwrap();
        slow.write_all(b"POST /echo HTTP/1.1\r\nhost: x\r\ncontent-length: 5\r\n\r\nhel")
            .await
            .unwrap();
        let answer = until_closed(&mut slow).await;
        assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
        assert!(answer.contains("did not arrive within 300 ms"), "{answer}");
    }

    #[tokio::test]
    async fn a_connection_whose_client_takes_in_nothing_is_closed() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        // An answer far larger than the connection's buffers.
        let app = Router::new().route("/big", get(|| async { "x".repeat(64 << 20) }));
        let (_stop, stopping) = watch::channel(false);
        let bounds = Bounds {
            write_stall: Duration::from_millis(300),
            ..NODE_BOUNDS
        };
        tokio::spawn(serve(listener, app, bounds, stopping));
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.set_recv_buffer_size(4096).unwrap();
        let mut conn = socket.connect(addr.parse().unwrap()).await.unwrap();
        conn.write_all(b"GET /big HTTP/1.1\r\nhost: x\r\n\r\n")
            .await
            .unwrap();
        // Nothing read for a while: the node gives up on the connection.
        tokio::time::sleep(Duration::from_secs(2)).await;
        let mut got = 0usize;
        let mut buf = vec![0u8; 1 << 16];
        let closed = tokio::time::timeout(Duration::from_secs(20), async {
            loop {
                match conn.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => got += n,
                }
            }
        })
        .await
        .is_ok();
        assert!(closed, "the connection is still open");
        assert!(got < 64 << 20, "the whole answer came: {got} bytes");
    }

    #[tokio::test]
    async fn an_operation_runs_to_its_end_when_its_client_goes_away() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let ended = std::sync::Arc::new(AtomicUsize::new(0));
        let count = ended.clone();
        // An operation with an `.await` in its middle, as a restore's `spawn_blocking` is.
        let app = Router::new()
            .route(
                "/op",
                axum::routing::post(move || async move {
                    tokio::time::sleep(Duration::from_millis(300)).await;
                    count.fetch_add(1, Ordering::SeqCst);
                }),
            )
            .route_layer(axum::middleware::from_fn(to_completion));
        let (_stop, stopping) = watch::channel(false);
        tokio::spawn(serve(listener, app, NODE_BOUNDS, stopping));
        let mut conn = tokio::net::TcpStream::connect(&addr).await.unwrap();
        conn.write_all(b"POST /op HTTP/1.1\r\nhost: x\r\ncontent-length: 0\r\n\r\n")
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
        // The client goes away with the operation under way: hyper drops the request's future.
        drop(conn);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while ended.load(Ordering::SeqCst) == 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(
            ended.load(Ordering::SeqCst),
            1,
            "the operation ran to its end"
        );
    }

    #[tokio::test]
    async fn once_stopping_it_accepts_nothing_and_returns() {
        let (addr, stop, server) = start(Duration::from_secs(60)).await;
        // A kept-alive connection, idle: stopping closes it rather than waiting for the bound.
        let mut conn = tokio::net::TcpStream::connect(&addr).await.unwrap();
        conn.write_all(b"GET /peer HTTP/1.1\r\nhost: x\r\n\r\n")
            .await
            .unwrap();
        let mut first = [0u8; 12];
        conn.read_exact(&mut first).await.unwrap();
        assert_eq!(&first, b"HTTP/1.1 200");
        stop.send(true).unwrap();
        tokio::time::timeout(Duration::from_secs(10), server)
            .await
            .expect("the server returned within 10 s of the stop")
            .unwrap();
        until_closed(&mut conn).await;
        assert!(tokio::net::TcpStream::connect(&addr).await.is_err());
    }
}
