//! A fault-injecting TCP proxy on loopback, for tests of how Ferry's S3 client copes with a store
//! that misbehaves: [`FaultProxy`] sits between a client and the test environment's MinIO (or any
//! other server on loopback) and, per HTTP request, at a configurable rate that tests switch at
//! run time, injects one of:
//!
//! - [`FaultKind::SlowDown`]: answers `503 Slow Down` with an S3 XML error and `Connection:
//!   close`, without passing the request on;
//! - [`FaultKind::ResetRequest`] / [`FaultKind::ResetResponse`]: resets both connections (TCP RST,
//!   `SO_LINGER` 0) at a random byte offset of the request, or of the response;
//! - [`FaultKind::Stall`]: stops forwarding in both directions at a random offset of the request or
//!   of the response, for [`FaultConfig::stall`] or until the client gives up;
//! - [`FaultKind::BlackHole`]: swallows the request and never answers (a fresh connection is
//!   accepted but never even connected upstream).
//!
//! It speaks just enough HTTP/1.1 to find where requests and responses begin and end
//! (`Content-Length` framing, as S3 clients use; a request it cannot frame makes the rest of its
//! connection pass through untouched). It counts what it injected ([`FaultProxy::counts`]), so that
//! a test can assert that faults really happened. It listens on 127.0.0.1 and refuses an upstream
//! that is not a loopback address: no other address is ever contacted.

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;

/// What the proxy can do to a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FaultKind {
    /// `503 Slow Down`, S3's throttling answer, with `Connection: close`.
    SlowDown,
    /// A TCP reset at a random byte of the request (the server sees it cut short).
    ResetRequest,
    /// A TCP reset at a random byte of the response (the client sees it cut short).
    ResetResponse,
    /// Nothing forwarded either way from a random byte of the request or the response on, for
    /// [`FaultConfig::stall`], or until the client closes the connection.
    Stall,
    /// The request is swallowed and never answered.
    BlackHole,
}

impl FaultKind {
    pub const ALL: [FaultKind; 5] = [
        FaultKind::SlowDown,
        FaultKind::ResetRequest,
        FaultKind::ResetResponse,
        FaultKind::Stall,
        FaultKind::BlackHole,
    ];
}

/// The head of a request, as the proxy saw it: what [`FaultConfig::only`] decides on.
#[derive(Debug, Clone)]
pub struct RequestHead {
    pub method: String,
    /// The request target: path and query, e.g. `/bucket/key?uploadId=...`.
    pub target: String,
    pub headers: Vec<(String, String)>,
}

impl RequestHead {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

type Filter = Arc<dyn Fn(&RequestHead) -> bool + Send + Sync>;

/// Which faults to inject, and how often. [`FaultConfig::default`] injects none.
#[derive(Clone, Default)]
pub struct FaultConfig {
    /// The probability that a request (one the filter accepts) gets a fault, within `0.0..=1.0`.
    pub rate: f64,
    /// The faults to choose from, with equal chances.
    pub kinds: Vec<FaultKind>,
    /// How long a [`FaultKind::Stall`] lasts; `None`: until the client gives up.
    pub stall: Option<Duration>,
    /// Only requests this accepts get faults; all when `None`.
    pub only: Option<Filter>,
    /// At most this many faults, then none; no limit when `None`.
    pub budget: Option<u64>,
}

impl std::fmt::Debug for FaultConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FaultConfig")
            .field("rate", &self.rate)
            .field("kinds", &self.kinds)
            .field("stall", &self.stall)
            .field("only", &self.only.as_ref().map(|_| "..."))
            .field("budget", &self.budget)
            .finish()
    }
}

impl FaultConfig {
    /// Faults of `kinds` on a fraction `rate` of the requests.
    pub fn new(rate: f64, kinds: &[FaultKind]) -> FaultConfig {
        assert!((0.0..=1.0).contains(&rate), "a rate is within 0..=1");
        FaultConfig {
            rate,
            kinds: kinds.to_vec(),
            ..FaultConfig::default()
        }
    }

    pub fn stall_for(mut self, stall: Option<Duration>) -> FaultConfig {
        self.stall = stall;
        self
    }

    pub fn only(mut self, filter: impl Fn(&RequestHead) -> bool + Send + Sync + 'static) -> Self {
        self.only = Some(Arc::new(filter));
        self
    }

    pub fn budget(mut self, faults: u64) -> FaultConfig {
        self.budget = Some(faults);
        self
    }
}

/// What the proxy saw and did. A fault counts once it happened: a reset or stall planned at an
/// offset the connection never reached does not count.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FaultCounts {
    pub connections: u64,
    pub requests: u64,
    pub slow_downs: u64,
    pub request_resets: u64,
    pub response_resets: u64,
    pub stalls: u64,
    pub black_holes: u64,
}

impl FaultCounts {
    /// Every fault injected.
    pub fn faults(&self) -> u64 {
        self.slow_downs
            + self.request_resets
            + self.response_resets
            + self.stalls
            + self.black_holes
    }
}

#[derive(Default)]
struct Counters {
    connections: AtomicU64,
    requests: AtomicU64,
    slow_downs: AtomicU64,
    request_resets: AtomicU64,
    response_resets: AtomicU64,
    stalls: AtomicU64,
    black_holes: AtomicU64,
    open: AtomicU64,
}

/// SplitMix64: small, seedable, and good enough to pick faults.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..bound` (0 when `bound` is 0).
    fn below(&mut self, bound: u64) -> u64 {
        if bound == 0 { 0 } else { self.next() % bound }
    }

    fn chance(&mut self, probability: f64) -> bool {
        ((self.next() >> 11) as f64 / (1u64 << 53) as f64) < probability
    }
}

struct Shared {
    upstream: SocketAddr,
    config: Mutex<FaultConfig>,
    rng: Mutex<Rng>,
    counters: Counters,
}

impl Shared {
    /// The fault for a request, if any: drawn from the seeded generator, so that a seed fixes the
    /// sequence of decisions (which request gets which still depends on the order requests come).
    fn decide(&self, head: &RequestHead) -> Option<FaultKind> {
        let mut config = self.config.lock().expect("fault config");
        if config.kinds.is_empty() || config.budget == Some(0) {
            return None;
        }
        if let Some(only) = &config.only
            && !only(head)
        {
            return None;
        }
        let mut rng = self.rng.lock().expect("fault rng");
        if !rng.chance(config.rate) {
            return None;
        }
        let kind = config.kinds[rng.below(config.kinds.len() as u64) as usize];
        if let Some(budget) = &mut config.budget {
            *budget -= 1;
        }
        Some(kind)
    }

    fn below(&self, bound: u64) -> u64 {
        self.rng.lock().expect("fault rng").below(bound)
    }

    fn coin(&self) -> bool {
        self.rng.lock().expect("fault rng").next() & 1 == 1
    }

    fn stall(&self) -> Option<Duration> {
        self.config.lock().expect("fault config").stall
    }
}

/// A fault-injecting proxy on 127.0.0.1, in front of a loopback server. It runs on a runtime of
/// its own, so that synchronous tests can use it; dropping it closes every connection.
pub struct FaultProxy {
    address: SocketAddr,
    seed: u64,
    shared: Arc<Shared>,
    runtime: Option<tokio::runtime::Runtime>,
}

impl std::fmt::Debug for FaultProxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "FaultProxy({} -> {}, seed {})",
            self.address, self.shared.upstream, self.seed
        )
    }
}

impl FaultProxy {
    /// A proxy to `upstream`, injecting no faults until [`FaultProxy::set`] says so. `seed` fixes
    /// the sequence of fault decisions and offsets; tests print it on failure.
    ///
    /// # Panics
    /// When `upstream` is not a loopback address: the proxy never contacts anything else.
    pub fn start(upstream: SocketAddr, seed: u64) -> FaultProxy {
        assert!(
            upstream.ip().is_loopback(),
            "the fault proxy forwards only to loopback, not to {upstream}"
        );
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("fault-proxy")
            .enable_all()
            .build()
            .expect("the fault proxy's runtime");
        let listener = runtime
            .block_on(TcpListener::bind((IpAddr::from([127, 0, 0, 1]), 0)))
            .expect("binding the fault proxy on 127.0.0.1");
        let address = listener.local_addr().expect("the fault proxy's address");
        let shared = Arc::new(Shared {
            upstream,
            config: Mutex::new(FaultConfig::default()),
            rng: Mutex::new(Rng(seed)),
            counters: Counters::default(),
        });
        runtime.spawn(accept_loop(listener, shared.clone()));
        FaultProxy {
            address,
            seed,
            shared,
            runtime: Some(runtime),
        }
    }

    /// A proxy in front of the test environment's MinIO.
    ///
    /// # Panics
    /// When the environment is down (with how to start it), or its S3 endpoint is not on loopback.
    pub fn in_front_of_minio(seed: u64) -> FaultProxy {
        let endpoint = crate::TestEnv::get().s3_endpoint();
        let authority = endpoint
            .strip_prefix("http://")
            .unwrap_or_else(|| panic!("the test S3 endpoint {endpoint} is not plain http"))
            .trim_end_matches('/');
        let upstream: SocketAddr = authority
            .parse()
            .unwrap_or_else(|error| panic!("the test S3 endpoint {endpoint}: {error}"));
        FaultProxy::start(upstream, seed)
    }

    pub fn address(&self) -> SocketAddr {
        self.address
    }

    /// `http://127.0.0.1:<port>`, for a client's endpoint.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.address)
    }

    pub fn seed(&self) -> u64 {
        self.seed
    }

    /// Replaces the faults injected from now on (connections under way included).
    pub fn set(&self, config: FaultConfig) {
        *self.shared.config.lock().expect("fault config") = config;
    }

    /// No faults from now on.
    pub fn clear(&self) {
        self.set(FaultConfig::default());
    }

    pub fn counts(&self) -> FaultCounts {
        let c = &self.shared.counters;
        FaultCounts {
            connections: c.connections.load(Ordering::SeqCst),
            requests: c.requests.load(Ordering::SeqCst),
            slow_downs: c.slow_downs.load(Ordering::SeqCst),
            request_resets: c.request_resets.load(Ordering::SeqCst),
            response_resets: c.response_resets.load(Ordering::SeqCst),
            stalls: c.stalls.load(Ordering::SeqCst),
            black_holes: c.black_holes.load(Ordering::SeqCst),
        }
    }

    /// Client connections open now.
    pub fn open_connections(&self) -> u64 {
        self.shared.counters.open.load(Ordering::SeqCst)
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        // Not a blocking shutdown: dropping a runtime inside another one (an async test) panics.
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    loop {
        let Ok((client, _)) = listener.accept().await else {
            continue;
        };
        shared.counters.connections.fetch_add(1, Ordering::SeqCst);
        shared.counters.open.fetch_add(1, Ordering::SeqCst);
        let shared = shared.clone();
        tokio::spawn(async move {
            let _ = client.set_nodelay(true);
            let mut connection = Connection {
                shared: shared.clone(),
                client,
                upstream: None,
                head: Vec::new(),
                body_left: 0,
                head_request: false,
                opaque: false,
                request_sent: 0,
                request_fault: None,
                response_fault: None,
                backlog: Vec::new(),
            };
            connection.run().await;
            shared.counters.open.fetch_sub(1, Ordering::SeqCst);
        });
    }
}

/// What a planned fault does once the connection reaches its offset.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Action {
    Reset,
    Stall,
}

/// A fault planned in the response to the current request: the offset is drawn once the
/// response's final head (its length) is known.
enum ResponseFault {
    /// Bytes of the response received so far, its final head not complete yet.
    Head { action: Action, buffered: Vec<u8> },
    /// Bytes still to forward before acting.
    Counting { action: Action, left: u64 },
}

enum Flow {
    Continue,
    /// Close both connections normally.
    Close,
    /// Reset both connections.
    Reset,
}

const MAX_HEAD: usize = 64 * 1024;

struct Connection {
    shared: Arc<Shared>,
    client: TcpStream,
    /// Connected at the first request that is passed on, so that a black-holed fresh connection
    /// never reaches the server.
    upstream: Option<TcpStream>,
    /// An incomplete request head.
    head: Vec<u8>,
    /// Bytes of the current request's body still to come from the client.
    body_left: u64,
    /// Whether the current request is a HEAD, whose answer has no body.
    head_request: bool,
    /// A request the proxy could not frame: the rest of the connection passes through untouched.
    opaque: bool,
    /// Bytes of the current request passed on so far.
    request_sent: u64,
    /// A fault at this offset of the current request.
    request_fault: Option<(Action, u64)>,
    response_fault: Option<ResponseFault>,
    /// Bytes the client sent during a stall, passed on after it.
    backlog: Vec<u8>,
}

enum Event {
    Client(Vec<u8>),
    Server(Vec<u8>),
    Closed,
}

impl Connection {
    async fn run(&mut self) {
        let mut client_buffer = vec![0u8; 64 * 1024];
        let mut server_buffer = vec![0u8; 64 * 1024];
        loop {
            let event = if !self.backlog.is_empty() {
                Event::Client(std::mem::take(&mut self.backlog))
            } else {
                let client = &mut self.client;
                let upstream = &mut self.upstream;
                tokio::select! {
                    read = client.read(&mut client_buffer) => match read {
                        Ok(0) | Err(_) => Event::Closed,
                        Ok(n) => Event::Client(client_buffer[..n].to_vec()),
                    },
                    read = async {
                        match upstream {
                            Some(upstream) => upstream.read(&mut server_buffer).await,
                            None => std::future::pending().await,
                        }
                    } => match read {
                        Ok(0) | Err(_) => Event::Closed,
                        Ok(n) => Event::Server(server_buffer[..n].to_vec()),
                    },
                }
            };
            let flow = match event {
                Event::Client(bytes) => self.client_sent(bytes).await,
                Event::Server(bytes) => self.server_sent(bytes).await,
                Event::Closed => Flow::Close,
            };
            match flow {
                Flow::Continue => {}
                Flow::Close => {
                    let _ = self.client.shutdown().await;
                    return;
                }
                Flow::Reset => {
                    let _ = self.client.set_zero_linger();
                    if let Some(upstream) = &self.upstream {
                        let _ = upstream.set_zero_linger();
                    }
                    return;
                }
            }
        }
    }

    async fn client_sent(&mut self, mut bytes: Vec<u8>) -> Flow {
        let mut start = 0;
        while start < bytes.len() {
            if self.opaque {
                return self.forward_to_server(&bytes[start..]).await;
            }
            if self.body_left > 0 {
                let n = (bytes.len() - start).min(self.body_left as usize);
                self.body_left -= n as u64;
                match self.request_part(&bytes[start..start + n]).await {
                    Flow::Continue => {}
                    other => return other,
                }
                start += n;
                continue;
            }
            // Part of a request head.
            self.head.extend_from_slice(&bytes[start..]);
            start = bytes.len();
            let Some(end) = find_head_end(&self.head) else {
                if self.head.len() > MAX_HEAD {
                    self.opaque = true;
                    let head = std::mem::take(&mut self.head);
                    return self.forward_to_server(&head).await;
                }
                continue;
            };
            let rest = self.head.split_off(end);
            let head_bytes = std::mem::take(&mut self.head);
            bytes = rest;
            start = 0;
            match self.begin_request(head_bytes).await {
                Flow::Continue => {}
                other => return other,
            }
        }
        Flow::Continue
    }

    /// A complete request head: decides its fault and passes it on (or not).
    async fn begin_request(&mut self, head_bytes: Vec<u8>) -> Flow {
        self.shared.counters.requests.fetch_add(1, Ordering::SeqCst);
        let Some(head) = parse_request_head(&head_bytes) else {
            // Not framed by Content-Length (chunked, or not HTTP): pass the rest through.
            self.opaque = true;
            if self.connect().await.is_err() {
                return Flow::Close;
            }
            return self.forward_to_server(&head_bytes).await;
        };
        let content_length = head
            .header("content-length")
            .and_then(|v| v.trim().parse::<u64>().ok())
            .unwrap_or(0);
        self.request_fault = None;
        self.response_fault = None;
        match self.shared.decide(&head) {
            None => {}
            Some(FaultKind::SlowDown) => return self.slow_down(&head).await,
            Some(FaultKind::BlackHole) => return self.black_hole().await,
            Some(FaultKind::ResetRequest) => {
                let at = self.shared.below(head_bytes.len() as u64 + content_length);
                self.request_fault = Some((Action::Reset, at));
            }
            Some(FaultKind::ResetResponse) => {
                self.response_fault = Some(ResponseFault::Head {
                    action: Action::Reset,
                    buffered: Vec::new(),
                });
            }
            Some(FaultKind::Stall) => {
                if self.shared.coin() {
                    let at = self.shared.below(head_bytes.len() as u64 + content_length);
                    self.request_fault = Some((Action::Stall, at));
                } else {
                    self.response_fault = Some(ResponseFault::Head {
                        action: Action::Stall,
                        buffered: Vec::new(),
                    });
                }
            }
        }
        if self.connect().await.is_err() {
            return Flow::Close;
        }
        // A HEAD request's answer has no body, whatever its Content-Length says.
        self.head_request = head.method.eq_ignore_ascii_case("HEAD");
        self.request_sent = 0;
        self.body_left = content_length;
        self.request_part(&head_bytes).await
    }

    /// Passes on bytes of the current request, acting on its planned fault at its offset.
    async fn request_part(&mut self, bytes: &[u8]) -> Flow {
        if let Some((action, at)) = self.request_fault {
            let end = self.request_sent + bytes.len() as u64;
            if at < end {
                let split = (at - self.request_sent) as usize;
                self.request_fault = None;
                match self.forward_to_server(&bytes[..split]).await {
                    Flow::Continue => {}
                    other => return other,
                }
                self.request_sent += split as u64;
                match action {
                    Action::Reset => {
                        self.shared
                            .counters
                            .request_resets
                            .fetch_add(1, Ordering::SeqCst);
                        return Flow::Reset;
                    }
                    Action::Stall => {
                        if !self.stall().await {
                            return Flow::Close;
                        }
                        self.request_sent += (bytes.len() - split) as u64;
                        return self.forward_to_server(&bytes[split..]).await;
                    }
                }
            }
        }
        self.request_sent += bytes.len() as u64;
        self.forward_to_server(bytes).await
    }

    async fn server_sent(&mut self, bytes: Vec<u8>) -> Flow {
        match self.response_fault.take() {
            None => self.forward_to_client(&bytes).await,
            Some(ResponseFault::Head {
                action,
                mut buffered,
            }) => {
                buffered.extend_from_slice(&bytes);
                loop {
                    let Some(end) = find_head_end(&buffered) else {
                        if buffered.len() > MAX_HEAD {
                            return self.forward_to_client(&buffered).await;
                        }
                        self.response_fault = Some(ResponseFault::Head { action, buffered });
                        return Flow::Continue;
                    };
                    let Some((status, content_length)) = parse_response_head(&buffered[..end])
                    else {
                        return self.forward_to_client(&buffered).await;
                    };
                    if (100..200).contains(&status) {
                        // An interim answer (100 Continue): passed on, the fault waits for the
                        // final one.
                        let rest = buffered.split_off(end);
                        match self.forward_to_client(&buffered).await {
                            Flow::Continue => {}
                            other => return other,
                        }
                        buffered = rest;
                        continue;
                    }
                    let body = if self.head_request || status == 204 || status == 304 {
                        0
                    } else {
                        content_length
                    };
                    let left = self.shared.below(end as u64 + body);
                    return self.response_counting(action, left, &buffered).await;
                }
            }
            Some(ResponseFault::Counting { action, left }) => {
                self.response_counting(action, left, &bytes).await
            }
        }
    }

    async fn response_counting(&mut self, action: Action, left: u64, bytes: &[u8]) -> Flow {
        if (bytes.len() as u64) <= left {
            self.response_fault = Some(ResponseFault::Counting {
                action,
                left: left - bytes.len() as u64,
            });
            return self.forward_to_client(bytes).await;
        }
        let split = left as usize;
        match self.forward_to_client(&bytes[..split]).await {
            Flow::Continue => {}
            other => return other,
        }
        match action {
            Action::Reset => {
                self.shared
                    .counters
                    .response_resets
                    .fetch_add(1, Ordering::SeqCst);
                Flow::Reset
            }
            Action::Stall => {
                if !self.stall().await {
                    return Flow::Close;
                }
                self.forward_to_client(&bytes[split..]).await
            }
        }
    }

    /// Forwards nothing for the configured time, or until the client gives up; returns whether
    /// the client is still there. What the client sends meanwhile is kept for after the stall.
    async fn stall(&mut self) -> bool {
        self.shared.counters.stalls.fetch_add(1, Ordering::SeqCst);
        let until = self.shared.stall().map(|stall| Instant::now() + stall);
        let mut buffer = vec![0u8; 64 * 1024];
        loop {
            tokio::select! {
                () = async {
                    match until {
                        Some(until) => tokio::time::sleep_until(until).await,
                        None => std::future::pending().await,
                    }
                } => return true,
                read = self.client.read(&mut buffer) => match read {
                    Ok(0) | Err(_) => return false,
                    // Kept only if it will be passed on.
                    Ok(n) => if until.is_some() {
                        self.backlog.extend_from_slice(&buffer[..n]);
                    },
                },
            }
        }
    }

    /// Answers as S3 does when it throttles, and closes the connection.
    async fn slow_down(&mut self, head: &RequestHead) -> Flow {
        let number = self
            .shared
            .counters
            .slow_downs
            .fetch_add(1, Ordering::SeqCst)
            + 1;
        let body = format!(
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>SlowDown</Code>\
             <Message>Please reduce your request rate.</Message><Resource>{}</Resource>\
             <RequestId>ferry-fault-proxy-{number}</RequestId></Error>",
            xml_escape(&head.target)
        );
        let mut answer = format!(
            "HTTP/1.1 503 Slow Down\r\nContent-Type: application/xml\r\nContent-Length: {}\r\n\
             x-amz-request-id: ferry-fault-proxy-{number}\r\nConnection: close\r\n\r\n",
            body.len()
        );
        if !head.method.eq_ignore_ascii_case("HEAD") {
            answer.push_str(&body);
        }
        if self.client.write_all(answer.as_bytes()).await.is_err() {
            return Flow::Close;
        }
        let _ = self.client.shutdown().await;
        // Read what the client still sends (a request body) before closing: closing a socket with
        // unread data makes the kernel send a reset, and the client would see that instead.
        let mut buffer = vec![0u8; 64 * 1024];
        let _ = tokio::time::timeout(Duration::from_secs(5), async {
            while matches!(self.client.read(&mut buffer).await, Ok(n) if n > 0) {}
        })
        .await;
        Flow::Close
    }

    /// Swallows everything the client sends and never answers, until it gives up.
    async fn black_hole(&mut self) -> Flow {
        self.shared
            .counters
            .black_holes
            .fetch_add(1, Ordering::SeqCst);
        self.upstream = None;
        let mut buffer = vec![0u8; 64 * 1024];
        while matches!(self.client.read(&mut buffer).await, Ok(n) if n > 0) {}
        Flow::Close
    }

    async fn connect(&mut self) -> std::io::Result<()> {
        if self.upstream.is_none() {
            let upstream = tokio::time::timeout(
                Duration::from_secs(10),
                TcpStream::connect(self.shared.upstream),
            )
            .await
            .map_err(|_| std::io::Error::from(std::io::ErrorKind::TimedOut))??;
            let _ = upstream.set_nodelay(true);
            self.upstream = Some(upstream);
        }
        Ok(())
    }

    async fn forward_to_server(&mut self, bytes: &[u8]) -> Flow {
        if bytes.is_empty() {
            return Flow::Continue;
        }
        let Some(upstream) = &mut self.upstream else {
            return Flow::Close;
        };
        if upstream.write_all(bytes).await.is_ok() {
            Flow::Continue
        } else {
            Flow::Close
        }
    }

    async fn forward_to_client(&mut self, bytes: &[u8]) -> Flow {
        if bytes.is_empty() || self.client.write_all(bytes).await.is_ok() {
            Flow::Continue
        } else {
            Flow::Close
        }
    }
}

/// Where the head ends (just past its blank line), if it is complete.
fn find_head_end(bytes: &[u8]) -> Option<usize> {
    bytes
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|position| position + 4)
}

/// A request head framed by Content-Length (or with no body); `None` for anything else.
fn parse_request_head(bytes: &[u8]) -> Option<RequestHead> {
    let text = std::str::from_utf8(bytes).ok()?;
    let mut lines = text.split("\r\n");
    let mut request_line = lines.next()?.split(' ');
    let method = request_line.next()?.to_owned();
    let target = request_line.next()?.to_owned();
    if !request_line.next()?.starts_with("HTTP/1.") {
        return None;
    }
    let headers: Vec<(String, String)> = lines
        .filter(|line| !line.is_empty())
        .filter_map(|line| {
            let (name, value) = line.split_once(':')?;
            Some((name.trim().to_owned(), value.trim().to_owned()))
        })
        .collect();
    let head = RequestHead {
        method,
        target,
        headers,
    };
    if head.header("transfer-encoding").is_some() {
        return None;
    }
    Some(head)
}

/// The status and Content-Length (0 when absent) of a response head.
fn parse_response_head(bytes: &[u8]) -> Option<(u16, u64)> {
    let text = std::str::from_utf8(bytes).ok()?;
    let mut lines = text.split("\r\n");
    let status = lines.next()?.split(' ').nth(1)?.parse().ok()?;
    let content_length = lines
        .filter_map(|line| line.split_once(':'))
        .find(|(name, _)| name.trim().eq_ignore_ascii_case("content-length"))
        .and_then(|(_, value)| value.trim().parse().ok())
        .unwrap_or(0);
    Some((status, content_length))
}

fn xml_escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

#[cfg(test)]
mod tests {
    use std::io::{ErrorKind, Read, Write};
    use std::net::{TcpListener as StdListener, TcpStream as StdStream};

    use super::*;

    /// What the test server received of one request.
    #[derive(Debug, Clone)]
    struct Received {
        body: usize,
        complete: bool,
    }

    /// A tiny HTTP/1.1 server on loopback: answers every request with its body echoed, or with
    /// `response_len` bytes when it has none; keeps connections alive.
    struct Server {
        address: SocketAddr,
        connections: Arc<AtomicU64>,
        received: Arc<Mutex<Vec<Received>>>,
    }

    impl Server {
        fn start(response_len: usize) -> Server {
            let listener = StdListener::bind("127.0.0.1:0").unwrap();
            let address = listener.local_addr().unwrap();
            let connections = Arc::new(AtomicU64::new(0));
            let received = Arc::new(Mutex::new(Vec::new()));
            let (c, r) = (connections.clone(), received.clone());
            std::thread::spawn(move || {
                for stream in listener.incoming() {
                    let Ok(stream) = stream else { continue };
                    c.fetch_add(1, Ordering::SeqCst);
                    let r = r.clone();
                    std::thread::spawn(move || serve(stream, response_len, &r));
                }
            });
            Server {
                address,
                connections,
                received,
            }
        }

        fn received(&self) -> Vec<Received> {
            self.received.lock().unwrap().clone()
        }
    }

    fn serve(mut stream: StdStream, response_len: usize, received: &Mutex<Vec<Received>>) {
        loop {
            let Some(head) = read_head(&mut stream) else {
                return;
            };
            let head = parse_request_head(&head).expect("a request head");
            let length: usize = head
                .header("content-length")
                .map_or(0, |v| v.parse().unwrap());
            let mut body = Vec::new();
            let complete = (&mut stream)
                .take(length as u64)
                .read_to_end(&mut body)
                .is_ok()
                && body.len() == length;
            received.lock().unwrap().push(Received {
                body: body.len(),
                complete,
            });
            if !complete {
                return;
            }
            let answer = if body.is_empty() {
                pattern(response_len)
            } else {
                body
            };
            let mut out = format!(
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n",
                answer.len()
            )
            .into_bytes();
            if head.method != "HEAD" {
                out.extend_from_slice(&answer);
            }
            if stream.write_all(&out).is_err() {
                return;
            }
        }
    }

    fn pattern(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i % 251) as u8).collect()
    }

    /// Reads a head, byte by byte (no read-ahead into the body); `None` at EOF or on an error.
    fn read_head(stream: &mut StdStream) -> Option<Vec<u8>> {
        let mut head = Vec::new();
        let mut byte = [0u8];
        while find_head_end(&head).is_none() {
            match stream.read(&mut byte) {
                Ok(1) => head.push(byte[0]),
                _ => return None,
            }
        }
        Some(head)
    }

    struct Answer {
        status: u16,
        head: String,
        body: Vec<u8>,
    }

    /// Sends a request on `stream` and reads its whole answer.
    fn exchange(stream: &mut StdStream, target: &str, body: &[u8]) -> std::io::Result<Answer> {
        let method = if body.is_empty() { "GET" } else { "PUT" };
        let mut request = format!(
            "{method} {target} HTTP/1.1\r\nHost: test\r\nContent-Length: {}\r\n\r\n",
            body.len()
        )
        .into_bytes();
        request.extend_from_slice(body);
        stream.write_all(&request)?;
        let mut head = Vec::new();
        let mut byte = [0u8];
        while find_head_end(&head).is_none() {
            if stream.read(&mut byte)? == 0 {
                return Err(ErrorKind::UnexpectedEof.into());
            }
            head.push(byte[0]);
        }
        let (status, length) = parse_response_head(&head).expect("a response head");
        let mut body = vec![0u8; length as usize];
        stream.read_exact(&mut body)?;
        Ok(Answer {
            status,
            head: String::from_utf8(head).unwrap(),
            body,
        })
    }

    fn connect(proxy: &FaultProxy) -> StdStream {
        let stream = StdStream::connect(proxy.address()).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        stream
    }

    fn wait_for(what: &str, mut condition: impl FnMut() -> bool) {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while !condition() {
            assert!(std::time::Instant::now() < deadline, "{what}");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    #[test]
    fn without_faults_requests_and_answers_pass_unchanged() {
        let server = Server::start(300_000);
        let proxy = FaultProxy::start(server.address, 1);
        let mut stream = connect(&proxy);
        let big = pattern(1 << 20);
        for body in [&b""[..], b"hello", &big] {
            let answer = exchange(&mut stream, "/a", body).unwrap();
            assert_eq!(answer.status, 200);
            let expected = if body.is_empty() {
                pattern(300_000)
            } else {
                body.to_vec()
            };
            assert!(answer.body == expected, "the answer differs");
        }
        let counts = proxy.counts();
        assert_eq!((counts.connections, counts.requests), (1, 3), "{counts:?}");
        assert_eq!(counts.faults(), 0);
        assert_eq!(server.connections.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn slow_down_answers_503_with_an_s3_error_and_closes() {
        let server = Server::start(10);
        let proxy = FaultProxy::start(server.address, 2);
        proxy.set(FaultConfig::new(1.0, &[FaultKind::SlowDown]));
        let mut stream = connect(&proxy);
        let answer = exchange(&mut stream, "/bucket/key", &pattern(200_000)).unwrap();
        assert_eq!(answer.status, 503);
        assert!(
            answer
                .head
                .to_ascii_lowercase()
                .contains("connection: close"),
            "{}",
            answer.head
        );
        let body = String::from_utf8(answer.body).unwrap();
        assert!(body.contains("<Code>SlowDown</Code>"), "{body}");
        assert!(body.contains("<Resource>/bucket/key</Resource>"), "{body}");
        assert_eq!(stream.read(&mut [0u8; 16]).unwrap(), 0, "closed after");
        assert_eq!(proxy.counts().slow_downs, 1);
        assert_eq!(
            server.connections.load(Ordering::SeqCst),
            0,
            "the request never reached the server"
        );
    }

    #[test]
    fn request_resets_cut_requests_at_random_offsets() {
        let server = Server::start(10);
        let proxy = FaultProxy::start(server.address, 3);
        proxy.set(FaultConfig::new(1.0, &[FaultKind::ResetRequest]));
        let body = pattern(256 * 1024);
        for _ in 0..20 {
            let mut stream = connect(&proxy);
            assert!(
                exchange(&mut stream, "/r", &body).is_err(),
                "a request cut short got an answer"
            );
        }
        assert_eq!(proxy.counts().request_resets, 20);
        wait_for("the proxy closes its connections", || {
            proxy.open_connections() == 0
        });
        let received = server.received();
        assert!(
            received.iter().all(|r| !r.complete),
            "the server got a whole request: {received:?}"
        );
        let mut lengths: Vec<usize> = received.iter().map(|r| r.body).collect();
        lengths.sort_unstable();
        lengths.dedup();
        assert!(
            lengths.len() > 5,
            "requests were cut at too few distinct offsets: {lengths:?}"
        );
    }

    #[test]
    fn response_resets_cut_answers_with_a_tcp_reset() {
        let server = Server::start(256 * 1024);
        let proxy = FaultProxy::start(server.address, 4);
        proxy.set(FaultConfig::new(1.0, &[FaultKind::ResetResponse]));
        for _ in 0..20 {
            let mut stream = connect(&proxy);
            match exchange(&mut stream, "/r", b"") {
                Ok(_) => panic!("a whole answer came through a reset"),
                Err(error) => assert_eq!(error.kind(), ErrorKind::ConnectionReset, "{error}"),
            }
        }
        assert_eq!(proxy.counts().response_resets, 20);
        assert!(
            server.received().iter().all(|r| r.complete),
            "the requests themselves went through"
        );
    }

    #[test]
    fn a_stall_holds_the_exchange_then_lets_it_finish() {
        let server = Server::start(100_000);
        let proxy = FaultProxy::start(server.address, 5);
        let stall = Duration::from_millis(300);
        proxy.set(FaultConfig::new(1.0, &[FaultKind::Stall]).stall_for(Some(stall)));
        for body in [pattern(0), pattern(100_000)] {
            let mut stream = connect(&proxy);
            let started = std::time::Instant::now();
            let answer = exchange(&mut stream, "/s", &body).unwrap();
            assert_eq!(answer.status, 200);
            assert_eq!(answer.body.len(), 100_000);
            assert!(
                started.elapsed() >= stall,
                "answered in {:?}, within the stall",
                started.elapsed()
            );
        }
        assert_eq!(proxy.counts().stalls, 2);
    }

    #[test]
    fn an_endless_stall_lasts_until_the_client_gives_up() {
        let server = Server::start(100_000);
        let proxy = FaultProxy::start(server.address, 6);
        proxy.set(FaultConfig::new(1.0, &[FaultKind::Stall]));
        let mut stream = connect(&proxy);
        stream
            .set_read_timeout(Some(Duration::from_millis(300)))
            .unwrap();
        let error = exchange(&mut stream, "/s", b"").err().expect("no answer");
        assert!(
            matches!(error.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut),
            "{error}"
        );
        assert_eq!(proxy.counts().stalls, 1);
        assert_eq!(proxy.open_connections(), 1);
        drop(stream);
        wait_for(
            "the stalled connection closes once the client gives up",
            || proxy.open_connections() == 0,
        );
    }

    #[test]
    fn a_black_hole_accepts_and_never_answers() {
        let server = Server::start(10);
        let proxy = FaultProxy::start(server.address, 7);
        proxy.set(FaultConfig::new(1.0, &[FaultKind::BlackHole]));
        let mut stream = connect(&proxy);
        stream
            .set_read_timeout(Some(Duration::from_millis(300)))
            .unwrap();
        let error = exchange(&mut stream, "/b", &pattern(100_000))
            .err()
            .expect("no answer");
        assert!(
            matches!(error.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut),
            "{error}"
        );
        assert_eq!(proxy.counts().black_holes, 1);
        assert_eq!(server.connections.load(Ordering::SeqCst), 0);
    }

    #[test]
    fn faults_follow_the_rate_the_filter_and_the_budget_and_switch_at_run_time() {
        let server = Server::start(10);
        let proxy = FaultProxy::start(server.address, 8);
        let status = |target: &str| exchange(&mut connect(&proxy), target, b"").unwrap().status;

        proxy.set(FaultConfig::new(1.0, &[FaultKind::SlowDown]).only(|h| h.target == "/bad"));
        assert_eq!(
            (status("/bad"), status("/good"), status("/bad")),
            (503, 200, 503)
        );

        proxy.set(FaultConfig::new(1.0, &[FaultKind::SlowDown]).budget(2));
        let statuses: Vec<u16> = (0..4).map(|_| status("/x")).collect();
        assert_eq!(statuses, [503, 503, 200, 200]);

        proxy.set(FaultConfig::new(0.5, &[FaultKind::SlowDown]));
        let before = proxy.counts().slow_downs;
        for _ in 0..100 {
            status("/x");
        }
        let faulted = proxy.counts().slow_downs - before;
        assert!((25..=75).contains(&faulted), "{faulted} of 100 at rate 0.5");

        proxy.clear();
        assert_eq!(status("/bad"), 200);
    }

    #[test]
    #[should_panic(expected = "only to loopback")]
    fn only_loopback_upstreams_are_accepted() {
        FaultProxy::start("192.0.2.1:80".parse().unwrap(), 9);
    }
}
