//! A scripted in-process SMTP server for integration tests.
//!
//! The delivery worker has to be tested against failures that a real relay
//! only produces by accident (temporary rejections, a relay that hangs after
//! the message body, a relay that dies with connections in the pool), so the
//! server here lets each test decide, step by step, what the relay answers.
//! It speaks just enough ESMTP for lettre's async transport and for `swaks`,
//! and records what it saw so that tests can assert on it.

use std::convert::Infallible;
use std::fmt::{self, Write as _};
use std::io;
use std::net::SocketAddr;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use tokio::io::{
    AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader, ReadHalf,
    WriteHalf,
};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;
use tokio::task::JoinHandle;

/// Command lines longer than this end the session; RFC 5321 only asks for
/// 512 bytes, but clients with long addresses or AUTH blobs go past 1000.
const MAX_LINE: usize = 64 * 1024;

const GREETING: &str = "localhost ESMTP postwire-test";

/// No PIPELINING on purpose: the server answers one command at a time, and
/// tests are easier to reason about when the client does the same.
const EHLO_KEYWORDS: &[&str] = &[
    "8BITMIME",
    "SMTPUTF8",
    "SIZE 52428800",
    "ENHANCEDSTATUSCODES",
    "AUTH PLAIN LOGIN",
];

/// Base64 of "Username:" and "Password:": lettre's AUTH LOGIN picks which
/// credential to send by decoding these exact prompts.
const CHALLENGE_USERNAME: &str = "VXNlcm5hbWU6";
const CHALLENGE_PASSWORD: &str = "UGFzc3dvcmQ6";

/// How many of the last commands a timeout panic shows, to help diagnose it
/// without flooding the test output.
const COMMANDS_IN_PANIC: usize = 20;

/// A running test SMTP server on 127.0.0.1 with an ephemeral port.
///
/// Clones share the same server. Dropping the last clone shuts the server
/// down, so keep a handle alive for as long as the code under test may
/// connect.
#[derive(Clone)]
pub struct TestSmtpServer {
    handle: Arc<Handle>,
}

/// One message whose DATA the server accepted with a 2xx reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReceivedMail {
    /// The reverse path without angle brackets or ESMTP parameters
    /// (`BODY=8BITMIME`, `SIZE=`, `SMTPUTF8`); empty for the null sender `<>`.
    pub mail_from: String,
    /// The forward paths whose RCPT TO got a 2xx, in the order sent; rejected
    /// recipients are left out because the relay did not take responsibility
    /// for them.
    pub rcpt_to: Vec<String>,
    /// The content exactly as the client meant it: dot-unstuffed, line
    /// endings untouched, ending with the CRLF that precedes the final
    /// `.\r\n` (RFC 5321: that CRLF ends the message's last line).
    pub data: Vec<u8>,
    /// The user the session authenticated as, if it did.
    pub auth_user: Option<String>,
    /// When the server accepted this transaction's MAIL FROM: the moment the
    /// client started the message, which is what a rate limit spaces.
    pub started_at: Instant,
}

/// A protocol step on which a [`Script`] decides the server's answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event<'a> {
    /// A client connected; the default answer is the 220 greeting.
    Connect,
    /// EHLO or HELO with its argument (both arrive here, since scripts rarely
    /// care which one the client used).
    Ehlo(&'a str),
    /// MAIL FROM with the bare address (no brackets, no parameters).
    MailFrom(&'a str),
    /// RCPT TO with the bare address.
    RcptTo(&'a str),
    /// The DATA command itself, before any content; answering anything but
    /// 354 refuses the content.
    Data,
    /// The content is complete; this answer decides whether the message is
    /// accepted (recorded in [`TestSmtpServer::received`]) or not.
    DataEnd {
        /// The transaction's reverse path.
        mail_from: &'a str,
        /// The recipients accepted in this transaction.
        rcpt_to: &'a [String],
        /// The dot-unstuffed content, as it would be recorded.
        data: &'a [u8],
    },
    /// Decoded AUTH PLAIN or AUTH LOGIN credentials; the default answer
    /// accepts any of them.
    Auth {
        /// The authentication identity.
        user: &'a str,
        /// The password.
        password: &'a str,
    },
    /// Any other command line (RSET, NOOP, QUIT, unknown verbs), whole.
    Other(&'a str),
}

/// What the server does at an [`Event`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// The answer a well-behaved relay would give at this step.
    Default,
    /// Answer `code text`; a text with `\n` becomes a multi-line reply.
    /// The step's side effect (accepting a recipient or a message,
    /// authenticating) happens only for a 2xx code (354 for DATA).
    Reply(u16, String),
    /// Never answer, and keep the socket open until the client gives up or
    /// the server is stopped, like a relay that hangs.
    Stall,
    /// Close the socket without answering, like a relay that crashes.
    Drop,
}

impl Action {
    /// Shorthand for [`Action::Reply`] that accepts `&str` texts.
    pub fn reply(code: u16, text: impl Into<String>) -> Action {
        Action::Reply(code, text.into())
    }
}

/// Where in the server's life an [`Event`] happens, so that scripts can
/// behave differently over time without keeping state of their own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Counters {
    /// 1-based index of this TCP session among all sessions of the server.
    pub session: usize,
    /// For [`Event::DataEnd`], the 1-based index of this content among all
    /// completed DATA contents of the server; for other events, how many were
    /// completed so far.
    pub data_attempt: usize,
    /// Whether this session has successfully authenticated.
    pub authenticated: bool,
    /// Sessions open right now, this one included: a relay that refuses one
    /// session too many answers the greeting by it.
    pub open: usize,
}

/// The server's behaviour: a function from each protocol step to an
/// [`Action`]. It runs on the session's task, so it must be quick and must
/// not block.
#[derive(Clone)]
pub struct Script(Arc<ScriptFn>);

type ScriptFn = dyn Fn(&Event<'_>, &Counters) -> Action + Send + Sync;

impl Script {
    /// Wraps a closure; a panic in it closes the session instead of hanging
    /// the test, and is reported when a `wait_for_*` call times out.
    pub fn new(f: impl Fn(&Event<'_>, &Counters) -> Action + Send + Sync + 'static) -> Script {
        Script(Arc::new(f))
    }

    /// A relay that accepts everything.
    pub fn accept_all() -> Script {
        Script::new(|_, _| Action::Default)
    }

    /// Refuses the recipient `address` (compared ignoring ASCII case) with
    /// `code`, accepts all other recipients.
    pub fn reject_rcpt(address: &str, code: u16) -> Script {
        let address = address.to_owned();
        Script::new(move |event, _| match event {
            Event::RcptTo(rcpt) if rcpt.eq_ignore_ascii_case(&address) => Action::Reply(
                code,
                format!("{}.1.1 <{rcpt}>: Recipient address rejected", code / 100),
            ),
            _ => Action::Default,
        })
    }

    /// Refuses every message content with `code`.
    pub fn reject_data(code: u16) -> Script {
        Script::new(move |event, _| match event {
            Event::DataEnd { .. } => data_refusal(code),
            _ => Action::Default,
        })
    }

    /// Refuses the first `n` message contents of the server's life (counted
    /// over all sessions, so retries on new connections count too) with
    /// `code`, then accepts.
    pub fn fail_first_data(n: usize, code: u16) -> Script {
        Script::new(move |event, counters| match event {
            Event::DataEnd { .. } if counters.data_attempt <= n => data_refusal(code),
            _ => Action::Default,
        })
    }

    /// Never answers after a message content, the classic way a relay makes
    /// a client wait forever.
    pub fn stall_on_data() -> Script {
        Script::new(|event, _| match event {
            Event::DataEnd { .. } => Action::Stall,
            _ => Action::Default,
        })
    }

    /// Accepts only these credentials (535 5.7.8 otherwise) and refuses MAIL
    /// from unauthenticated sessions with 530 5.7.0.
    pub fn require_auth(user: &str, password: &str) -> Script {
        let user = user.to_owned();
        let password = password.to_owned();
        Script::new(move |event, counters| match event {
            Event::Auth {
                user: u,
                password: p,
            } if *u == user && *p == password => Action::Default,
            Event::Auth { .. } => Action::reply(535, "5.7.8 Authentication credentials invalid"),
            Event::MailFrom(_) if !counters.authenticated => {
                Action::reply(530, "5.7.0 Authentication required")
            }
            _ => Action::Default,
        })
    }
}

impl Default for Script {
    fn default() -> Script {
        Script::accept_all()
    }
}

impl fmt::Debug for Script {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Script(..)")
    }
}

fn data_refusal(code: u16) -> Action {
    let text = if code / 100 == 4 {
        "4.3.0 Temporary failure, try again later"
    } else {
        "5.7.1 Message rejected"
    };
    Action::reply(code, text)
}

impl TestSmtpServer {
    /// Starts a server that accepts everything.
    ///
    /// # Panics
    ///
    /// If 127.0.0.1 cannot be bound, which no test could work around.
    pub async fn start() -> TestSmtpServer {
        TestSmtpServer::start_with(Script::accept_all()).await
    }

    /// Starts a server whose answers come from `script`.
    ///
    /// # Panics
    ///
    /// If 127.0.0.1 cannot be bound, which no test could work around.
    pub async fn start_with(script: Script) -> TestSmtpServer {
        TestSmtpServer::start_inner(script, None, "127.0.0.1").await
    }

    /// Starts a server listening on every interface, reachable through this
    /// machine's non-loopback addresses too (see [`non_loopback_ip`]).
    ///
    /// # Panics
    ///
    /// If 0.0.0.0 cannot be bound.
    pub async fn start_public(script: Script) -> TestSmtpServer {
        TestSmtpServer::start_inner(script, None, "0.0.0.0").await
    }

    /// Starts a server that speaks TLS with `identity` as `mode` says, its answers
    /// coming from `script`. A client whose handshake fails is dropped.
    ///
    /// # Panics
    ///
    /// If 127.0.0.1 cannot be bound or the identity is unusable.
    pub async fn start_tls(
        mode: TlsMode,
        script: Script,
        identity: native_tls::Identity,
    ) -> TestSmtpServer {
        let acceptor = native_tls::TlsAcceptor::new(identity)
            .expect("test SMTP server: unusable TLS identity");
        TestSmtpServer::start_inner(script, Some((mode, acceptor.into())), "127.0.0.1").await
    }

    async fn start_inner(
        script: Script,
        tls: Option<(TlsMode, tokio_native_tls::TlsAcceptor)>,
        interface: &str,
    ) -> TestSmtpServer {
        let listener = TcpListener::bind((interface, 0))
            .await
            .unwrap_or_else(|e| panic!("test SMTP server: cannot bind {interface}:0: {e}"));
        let addr = listener
            .local_addr()
            .expect("test SMTP server: no local address");
        let shared = Arc::new(Shared {
            addr,
            tls,
            script: Mutex::new(script),
            received: Mutex::new(Vec::new()),
            commands: Mutex::new(Vec::new()),
            script_panics: Mutex::new(Vec::new()),
            data_attempts: AtomicUsize::new(0),
            sessions_opened: AtomicUsize::new(0),
            sessions_open: AtomicUsize::new(0),
            peak_open: AtomicUsize::new(0),
            lenient: AtomicBool::new(false),
            bare_line_ends: AtomicUsize::new(0),
            longest_line: AtomicUsize::new(0),
            changed: Notify::new(),
            accept_task: Mutex::new(None),
            session_tasks: Mutex::new(Vec::new()),
        });
        let task = tokio::spawn(accept_loop(listener, Arc::clone(&shared)));
        *lock(&shared.accept_task) = Some(task);
        TestSmtpServer {
            handle: Arc::new(Handle { shared }),
        }
    }

    fn shared(&self) -> &Shared {
        &self.handle.shared
    }

    /// The listening address (127.0.0.1 and the chosen port).
    pub fn addr(&self) -> SocketAddr {
        self.shared().addr
    }

    /// The listening port, for configuring the code under test.
    pub fn port(&self) -> u16 {
        self.shared().addr.port()
    }

    /// The messages accepted so far, in acceptance order. A message is
    /// recorded before its 250 is sent, so it is here as soon as the client
    /// has seen its send succeed.
    pub fn received(&self) -> Vec<ReceivedMail> {
        lock(&self.shared().received).clone()
    }

    /// How many message contents were completed, whatever the answer (or
    /// lack of one): tells retries apart from messages that never got sent.
    pub fn data_attempts(&self) -> usize {
        self.shared().data_attempts.load(Ordering::SeqCst)
    }

    /// Waits until at least `n` messages were accepted and returns them all.
    ///
    /// # Panics
    ///
    /// After `timeout`, with how many messages did arrive and the last
    /// commands seen, since delivery happens on other tasks and a bare
    /// timeout would say nothing about why.
    pub async fn wait_for_messages(&self, n: usize, timeout: Duration) -> Vec<ReceivedMail> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            // Created before checking, so a change in between still wakes us.
            let changed = self.shared().changed.notified();
            let received = self.received();
            if received.len() >= n {
                return received;
            }
            if tokio::time::timeout_at(deadline, changed).await.is_err() {
                let arrived = self.received().len();
                let what = format!("waiting for {n} accepted message(s), but {arrived} arrived");
                panic!("{}", self.timeout_report(&what, timeout));
            }
        }
    }

    /// Waits until exactly `n` sessions are open. Clients close connections
    /// asynchronously, so checking [`TestSmtpServer::sessions_open`] right
    /// after an operation would be racy.
    ///
    /// # Panics
    ///
    /// After `timeout`, with the number still open.
    pub async fn wait_for_sessions_open(&self, n: usize, timeout: Duration) {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let changed = self.shared().changed.notified();
            if self.sessions_open() == n {
                return;
            }
            if tokio::time::timeout_at(deadline, changed).await.is_err() {
                let open = self.sessions_open();
                let what = format!("waiting for {n} open session(s), but {open} are open");
                panic!("{}", self.timeout_report(&what, timeout));
            }
        }
    }

    fn timeout_report(&self, what: &str, timeout: Duration) -> String {
        let commands = self.commands();
        let tail = &commands[commands.len().saturating_sub(COMMANDS_IN_PANIC)..];
        let panics = lock(&self.shared().script_panics).clone();
        format!(
            "test SMTP server on {}: timed out after {timeout:?} {what} \
             ({} DATA attempt(s), {} session(s) opened, {} open); \
             script panics: {panics:?}; last commands: {tail:?}",
            self.addr(),
            self.data_attempts(),
            self.sessions_opened(),
            self.sessions_open(),
        )
    }

    /// How many TCP connections were accepted so far, to check connection
    /// reuse by a pool.
    pub fn sessions_opened(&self) -> usize {
        self.shared().sessions_opened.load(Ordering::SeqCst)
    }

    /// How many connections are open right now, to detect leaked pool
    /// connections.
    pub fn sessions_open(&self) -> usize {
        self.shared().sessions_open.load(Ordering::SeqCst)
    }

    /// The most sessions that were open at the same time.
    pub fn peak_sessions_open(&self) -> usize {
        self.shared().peak_open.load(Ordering::SeqCst)
    }

    /// Every command line received over all sessions, in arrival order,
    /// without line ending; message contents are left out but AUTH
    /// continuation lines (base64) are kept.
    pub fn commands(&self) -> Vec<String> {
        lock(&self.shared().commands).clone()
    }

    /// Makes the server read like a lenient relay (many real ones): a line ends at
    /// CRLF, at a bare LF or at a bare CR, for commands and message content alike, so
    /// a lone `.` between any two of them ends DATA and whatever follows is read as
    /// commands. A client whose content holds such a sequence would have a second
    /// transaction run in its session: count the MAIL commands in
    /// [`TestSmtpServer::commands`]. Takes effect on the next line read.
    pub fn set_lenient(&self, lenient: bool) {
        self.shared().lenient.store(lenient, Ordering::SeqCst);
    }

    /// How many line ends in message contents were a bare CR or a bare LF (lenient
    /// mode only): a client that keeps the wire invariant sends none.
    pub fn bare_line_ends(&self) -> usize {
        self.shared().bare_line_ends.load(Ordering::SeqCst)
    }

    /// The longest line of any message content so far, without its line end
    /// (lenient mode only); RFC 5322 allows 998.
    pub fn longest_line(&self) -> usize {
        self.shared().longest_line.load(Ordering::SeqCst)
    }

    /// Replaces the script; events from then on, including in sessions
    /// already open, follow the new one (e.g. a relay that comes back).
    pub fn set_script(&self, script: Script) {
        *lock(&self.shared().script) = script;
    }

    /// Stops listening and closes every open session, as if the relay died.
    /// Returns once the port refuses connections and
    /// [`TestSmtpServer::sessions_open`] is 0.
    pub async fn stop(&self) {
        let shared = self.shared();
        let accept = lock(&shared.accept_task).take();
        if let Some(task) = accept {
            task.abort();
            let _ = task.await;
        }
        // The accept task is gone, so no session can be added behind our back.
        let sessions: Vec<_> = lock(&shared.session_tasks).drain(..).collect();
        for task in &sessions {
            task.abort();
        }
        for task in sessions {
            let _ = task.await;
        }
    }
}

impl fmt::Debug for TestSmtpServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TestSmtpServer")
            .field("addr", &self.addr())
            .field("sessions_open", &self.sessions_open())
            .finish_non_exhaustive()
    }
}

/// Owned by the clones of [`TestSmtpServer`] only (the tasks hold `Shared`),
/// so its drop marks the moment the test no longer needs the server.
struct Handle {
    shared: Arc<Shared>,
}

impl Drop for Handle {
    fn drop(&mut self) {
        if let Some(task) = lock(&self.shared.accept_task).take() {
            task.abort();
        }
        for task in lock(&self.shared.session_tasks).drain(..) {
            task.abort();
        }
    }
}

/// An address of this machine that is not loopback (the one its default route
/// leaves from); found without sending anything.
///
/// # Panics
///
/// On a machine with no network interface but loopback.
pub fn non_loopback_ip() -> std::net::IpAddr {
    let socket = std::net::UdpSocket::bind("0.0.0.0:0").expect("a UDP socket");
    socket
        .connect("198.51.100.1:9")
        .and_then(|()| socket.local_addr())
        .map(|a| a.ip())
        .ok()
        .filter(|ip| !ip.is_loopback() && !ip.is_unspecified())
        .expect("this machine has a non-loopback address")
}

/// How a TLS test server offers TLS.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsMode {
    /// From the first byte (SMTPS, port 465 style).
    Implicit,
    /// After the client's STARTTLS, which EHLO advertises until then.
    Starttls,
}

struct Shared {
    addr: SocketAddr,
    /// Present for a server that speaks TLS.
    tls: Option<(TlsMode, tokio_native_tls::TlsAcceptor)>,
    script: Mutex<Script>,
    received: Mutex<Vec<ReceivedMail>>,
    commands: Mutex<Vec<String>>,
    script_panics: Mutex<Vec<String>>,
    data_attempts: AtomicUsize,
    sessions_opened: AtomicUsize,
    sessions_open: AtomicUsize,
    /// The most sessions that were open at once.
    peak_open: AtomicUsize,
    /// Reads lines the way a lenient relay does (see [`TestSmtpServer::set_lenient`]).
    lenient: AtomicBool,
    /// Line ends in message contents that were a bare CR or a bare LF.
    bare_line_ends: AtomicUsize,
    /// The longest line of any message content, without its line end.
    longest_line: AtomicUsize,
    /// Woken on every change a `wait_for_*` call may be waiting for.
    changed: Notify,
    accept_task: Mutex<Option<JoinHandle<()>>>,
    session_tasks: Mutex<Vec<JoinHandle<()>>>,
}

/// Poisoning only means a script panicked elsewhere; the data is still
/// consistent because no lock is held while user code runs.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Counts a session as open for exactly as long as its task exists, which
/// also covers tasks aborted by `stop`.
struct OpenGuard(Arc<Shared>);

impl Drop for OpenGuard {
    fn drop(&mut self) {
        self.0.sessions_open.fetch_sub(1, Ordering::SeqCst);
        self.0.changed.notify_waiters();
    }
}

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            // Usually fd exhaustion; retrying later beats a dead server.
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        let index = shared.sessions_opened.fetch_add(1, Ordering::SeqCst) + 1;
        let open = shared.sessions_open.fetch_add(1, Ordering::SeqCst) + 1;
        shared.peak_open.fetch_max(open, Ordering::SeqCst);
        let guard = OpenGuard(Arc::clone(&shared));
        shared.changed.notify_waiters();
        let task = tokio::spawn(run_session(stream, index, guard));
        let mut tasks = lock(&shared.session_tasks);
        tasks.retain(|task| !task.is_finished());
        tasks.push(task);
    }
}

/// A session's byte stream: plain TCP or TLS over it.
trait Stream: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> Stream for T {}

async fn run_session(stream: TcpStream, index: usize, guard: OpenGuard) {
    let _ = stream.set_nodelay(true);
    let stream: Box<dyn Stream> = match &guard.0.tls {
        None | Some((TlsMode::Starttls, _)) => Box::new(stream),
        Some((TlsMode::Implicit, acceptor)) => match acceptor.accept(stream).await {
            Ok(tls) => Box::new(tls),
            // The client refused our certificate (or spoke no TLS): nothing to serve.
            Err(_) => return,
        },
    };
    let (reader, writer) = tokio::io::split(stream);
    let mut session = Session {
        shared: Arc::clone(&guard.0),
        index,
        reader: BufReader::with_capacity(64 * 1024, reader),
        writer,
        in_service: true,
        greeted: false,
        secure: matches!(guard.0.tls, Some((TlsMode::Implicit, _))),
        auth_user: None,
        mail_from: None,
        mail_at: None,
        rcpt_to: Vec::new(),
        pending_cr: false,
    };
    let Err(exit) = session.serve().await;
    if let Exit::Stall = exit {
        // Reading (and discarding) is the only way to notice that the client
        // hung up; the writer stays alive so the client sees no FIN.
        let _ = tokio::io::copy(&mut session.reader, &mut tokio::io::sink()).await;
    }
    drop(session);
    drop(guard);
}

/// Why a session stops processing commands.
enum Exit {
    Close,
    Stall,
}

impl From<io::Error> for Exit {
    fn from(_: io::Error) -> Exit {
        Exit::Close
    }
}

/// The answer to send, once a script's [`Action`] has been resolved.
type Reply = (u16, String);

fn resolve(action: Action, code: u16, text: impl FnOnce() -> String) -> Result<Reply, Exit> {
    match action {
        Action::Default => Ok((code, text())),
        Action::Reply(code, text) => Ok((code, text)),
        Action::Stall => Err(Exit::Stall),
        Action::Drop => Err(Exit::Close),
    }
}

fn is_2xx(code: u16) -> bool {
    (200..300).contains(&code)
}

/// A SASL response line, or the reason there is none.
enum Sasl {
    Value(Vec<u8>),
    /// Already answered (cancelled or undecodable): the AUTH command is over.
    Answered,
}

struct Session {
    shared: Arc<Shared>,
    index: usize,
    reader: BufReader<ReadHalf<Box<dyn Stream>>>,
    writer: WriteHalf<Box<dyn Stream>>,
    /// False after a non-2xx greeting: the client may then only QUIT.
    in_service: bool,
    greeted: bool,
    /// The session runs over TLS (implicit, or after STARTTLS).
    secure: bool,
    auth_user: Option<String>,
    mail_from: Option<String>,
    mail_at: Option<Instant>,
    rcpt_to: Vec<String>,
    /// Lenient reading ended a line at a CR that was the last byte received so far;
    /// an LF arriving next belongs to it.
    pending_cr: bool,
}

/// How a line read in lenient mode ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum LineEnd {
    CrLf,
    Lf,
    Cr,
    /// A CR that was the last byte received: a CRLF if an LF comes next.
    CrPending,
}

impl Session {
    fn lenient(&self) -> bool {
        self.shared.lenient.load(Ordering::SeqCst)
    }

    /// Reads one line as a lenient relay does: up to CRLF, a bare LF or a bare CR.
    async fn read_lenient_line(&mut self) -> Result<(Vec<u8>, LineEnd), Exit> {
        let mut line = Vec::new();
        loop {
            let buf = self.reader.fill_buf().await?;
            if buf.is_empty() {
                return Err(Exit::Close);
            }
            if std::mem::take(&mut self.pending_cr) && buf[0] == b'\n' {
                self.reader.consume(1);
                continue;
            }
            let Some(i) = buf.iter().position(|b| *b == b'\r' || *b == b'\n') else {
                line.extend_from_slice(buf);
                let n = buf.len();
                self.reader.consume(n);
                if line.len() > MAX_LINE * 1024 {
                    return Err(Exit::Close);
                }
                continue;
            };
            line.extend_from_slice(&buf[..i]);
            let (end, used) = match (buf[i], buf.get(i + 1)) {
                (b'\n', _) => (LineEnd::Lf, 1),
                (_, Some(b'\n')) => (LineEnd::CrLf, 2),
                (_, Some(_)) => (LineEnd::Cr, 1),
                (_, None) => (LineEnd::CrPending, 1),
            };
            self.reader.consume(i + used);
            self.pending_cr = end == LineEnd::CrPending;
            return Ok((line, end));
        }
    }

    /// Message content read leniently: ends at a line that is a lone `.`, whatever
    /// ends the lines around it. Recorded lines are joined with CRLF.
    async fn read_lenient_content(&mut self) -> Result<Vec<u8>, Exit> {
        let mut data = Vec::new();
        loop {
            let (mut line, end) = self.read_lenient_line().await?;
            if matches!(end, LineEnd::Lf | LineEnd::Cr) {
                self.shared.bare_line_ends.fetch_add(1, Ordering::SeqCst);
            }
            self.shared
                .longest_line
                .fetch_max(line.len(), Ordering::SeqCst);
            if line == b"." {
                return Ok(data);
            }
            if line.first() == Some(&b'.') {
                line.remove(0);
            }
            data.extend_from_slice(&line);
            data.extend_from_slice(b"\r\n");
        }
    }

    async fn serve(&mut self) -> Result<Infallible, Exit> {
        let action = self.decide(&Event::Connect, self.counters());
        let (code, text) = resolve(action, 220, || GREETING.to_owned())?;
        self.in_service = is_2xx(code);
        self.write_reply(code, &text).await?;
        loop {
            let line = self.read_command().await?;
            self.handle(&line).await?;
        }
    }

    fn counters(&self) -> Counters {
        Counters {
            session: self.index,
            data_attempt: self.shared.data_attempts.load(Ordering::SeqCst),
            authenticated: self.auth_user.is_some(),
            open: self.shared.sessions_open.load(Ordering::SeqCst),
        }
    }

    fn decide(&self, event: &Event<'_>, counters: Counters) -> Action {
        // Cloned out so the lock is not held while user code runs.
        let script = lock(&self.shared.script).clone();
        match catch_unwind(AssertUnwindSafe(|| (script.0)(event, &counters))) {
            Ok(action) => action,
            Err(payload) => {
                let message = payload
                    .downcast_ref::<&str>()
                    .map(|s| (*s).to_owned())
                    .or_else(|| payload.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "non-string panic".to_owned());
                lock(&self.shared.script_panics).push(format!(
                    "session {} at {}: {message}",
                    self.index,
                    event_name(event)
                ));
                self.shared.changed.notify_waiters();
                Action::Drop
            }
        }
    }

    async fn write_reply(&mut self, code: u16, text: &str) -> io::Result<()> {
        let lines: Vec<&str> = text.split('\n').map(|l| l.trim_end_matches('\r')).collect();
        let mut out = String::with_capacity(text.len() + 8 * lines.len());
        for (i, line) in lines.iter().enumerate() {
            let separator = if i + 1 == lines.len() { ' ' } else { '-' };
            let _ = write!(out, "{code}{separator}{line}\r\n");
        }
        self.writer.write_all(out.as_bytes()).await
    }

    /// Reads one line, records it in `commands`, and returns it without its
    /// line ending.
    async fn read_command(&mut self) -> Result<String, Exit> {
        if self.lenient() {
            let (line, _) = self.read_lenient_line().await?;
            let line = String::from_utf8_lossy(&line).into_owned();
            lock(&self.shared.commands).push(line.clone());
            return Ok(line);
        }
        let mut buf = Vec::with_capacity(256);
        let n = (&mut self.reader)
            .take(MAX_LINE as u64)
            .read_until(b'\n', &mut buf)
            .await?;
        if n == 0 || !buf.ends_with(b"\n") {
            if n >= MAX_LINE {
                self.write_reply(500, "5.5.2 Error: line too long").await?;
            }
            // End of stream, possibly in the middle of a line.
            return Err(Exit::Close);
        }
        buf.pop();
        if buf.ends_with(b"\r") {
            buf.pop();
        }
        let line = String::from_utf8_lossy(&buf).into_owned();
        lock(&self.shared.commands).push(line.clone());
        Ok(line)
    }

    async fn handle(&mut self, line: &str) -> Result<(), Exit> {
        let (verb, arg) = match line.split_once(' ') {
            Some((verb, arg)) => (verb, arg.trim()),
            None => (line.trim(), ""),
        };
        let verb = verb.to_ascii_uppercase();
        if !self.in_service {
            return if verb == "QUIT" {
                self.write_reply(221, "2.0.0 Bye").await?;
                Err(Exit::Close)
            } else {
                self.write_reply(503, "5.5.1 Error: no SMTP service here")
                    .await?;
                Ok(())
            };
        }
        match verb.as_str() {
            "EHLO" | "HELO" => self.hello(&verb, arg).await,
            "STARTTLS" => self.starttls().await,
            "AUTH" => self.auth(arg).await,
            "MAIL" => self.mail(arg).await,
            "RCPT" => self.rcpt(arg).await,
            "DATA" => self.data().await,
            _ => self.other(&verb, line).await,
        }
    }

    async fn hello(&mut self, verb: &str, arg: &str) -> Result<(), Exit> {
        if arg.is_empty() {
            self.write_reply(501, &format!("5.5.4 Syntax: {verb} hostname"))
                .await?;
            return Ok(());
        }
        let action = self.decide(&Event::Ehlo(arg), self.counters());
        let (code, text) = resolve(action, 250, || {
            if verb == "EHLO" {
                let mut lines = vec![format!("localhost greets {arg}")];
                lines.extend(EHLO_KEYWORDS.iter().map(|k| (*k).to_owned()));
                if self.starttls_offered() {
                    lines.push("STARTTLS".to_owned());
                }
                lines.join("\n")
            } else {
                "localhost".to_owned()
            }
        })?;
        if is_2xx(code) {
            self.greeted = true;
            self.reset_transaction();
        }
        self.write_reply(code, &text).await?;
        Ok(())
    }

    async fn auth(&mut self, arg: &str) -> Result<(), Exit> {
        let refusal = if !self.greeted {
            Some("5.5.1 Error: send EHLO first")
        } else if self.auth_user.is_some() {
            Some("5.5.1 Error: already authenticated")
        } else if self.mail_from.is_some() {
            Some("5.5.1 Error: MAIL transaction in progress")
        } else {
            None
        };
        if let Some(text) = refusal {
            self.write_reply(503, text).await?;
            return Ok(());
        }
        let (mechanism, initial) = match arg.split_once(' ') {
            Some((mechanism, initial)) => (mechanism, Some(initial.trim())),
            None => (arg, None),
        };
        let (user, password) = match mechanism.to_ascii_uppercase().as_str() {
            "PLAIN" => {
                let response = match initial {
                    Some(initial) => self.sasl_decode(initial).await?,
                    None => self.sasl_challenge("").await?,
                };
                let Sasl::Value(response) = response else {
                    return Ok(());
                };
                // authzid NUL authcid NUL passwd
                let parts: Vec<&[u8]> = response.split(|b| *b == 0).collect();
                if parts.len() != 3 {
                    self.write_reply(501, "5.5.2 Error: malformed PLAIN response")
                        .await?;
                    return Ok(());
                }
                (
                    String::from_utf8_lossy(parts[1]).into_owned(),
                    String::from_utf8_lossy(parts[2]).into_owned(),
                )
            }
            "LOGIN" => {
                let user = match initial {
                    Some(initial) => self.sasl_decode(initial).await?,
                    None => self.sasl_challenge(CHALLENGE_USERNAME).await?,
                };
                let Sasl::Value(user) = user else {
                    return Ok(());
                };
                let Sasl::Value(password) = self.sasl_challenge(CHALLENGE_PASSWORD).await? else {
                    return Ok(());
                };
                (
                    String::from_utf8_lossy(&user).into_owned(),
                    String::from_utf8_lossy(&password).into_owned(),
                )
            }
            _ => {
                self.write_reply(504, "5.5.4 Unrecognized authentication type")
                    .await?;
                return Ok(());
            }
        };
        let event = Event::Auth {
            user: &user,
            password: &password,
        };
        let action = self.decide(&event, self.counters());
        let (code, text) = resolve(action, 235, || "2.7.0 Authentication successful".to_owned())?;
        if is_2xx(code) {
            self.auth_user = Some(user);
        }
        self.write_reply(code, &text).await?;
        Ok(())
    }

    async fn sasl_challenge(&mut self, challenge: &str) -> Result<Sasl, Exit> {
        self.write_reply(334, challenge).await?;
        let line = self.read_command().await?;
        self.sasl_decode(&line).await
    }

    async fn sasl_decode(&mut self, text: &str) -> Result<Sasl, Exit> {
        let text = text.trim();
        if text == "*" {
            self.write_reply(501, "5.7.0 Authentication cancelled")
                .await?;
            return Ok(Sasl::Answered);
        }
        if text == "=" {
            return Ok(Sasl::Value(Vec::new()));
        }
        if let Some(bytes) = base64_decode(text) {
            return Ok(Sasl::Value(bytes));
        }
        self.write_reply(501, "5.5.2 Error: invalid base64 in AUTH response")
            .await?;
        Ok(Sasl::Answered)
    }

    async fn mail(&mut self, arg: &str) -> Result<(), Exit> {
        if !self.greeted {
            self.write_reply(503, "5.5.1 Error: send HELO/EHLO first")
                .await?;
            return Ok(());
        }
        if self.mail_from.is_some() {
            self.write_reply(503, "5.5.1 Error: nested MAIL command")
                .await?;
            return Ok(());
        }
        let Some(address) = parse_path(arg, "FROM:") else {
            self.write_reply(501, "5.5.4 Syntax: MAIL FROM:<address>")
                .await?;
            return Ok(());
        };
        let action = self.decide(&Event::MailFrom(address), self.counters());
        let (code, text) = resolve(action, 250, || "2.1.0 Ok".to_owned())?;
        if is_2xx(code) {
            self.mail_from = Some(address.to_owned());
            self.mail_at = Some(Instant::now());
            self.rcpt_to.clear();
        }
        self.write_reply(code, &text).await?;
        Ok(())
    }

    async fn rcpt(&mut self, arg: &str) -> Result<(), Exit> {
        if self.mail_from.is_none() {
            self.write_reply(503, "5.5.1 Error: need MAIL command")
                .await?;
            return Ok(());
        }
        let Some(address) = parse_path(arg, "TO:").filter(|a| !a.is_empty()) else {
            self.write_reply(501, "5.5.4 Syntax: RCPT TO:<address>")
                .await?;
            return Ok(());
        };
        let action = self.decide(&Event::RcptTo(address), self.counters());
        let (code, text) = resolve(action, 250, || "2.1.5 Ok".to_owned())?;
        if is_2xx(code) {
            self.rcpt_to.push(address.to_owned());
        }
        self.write_reply(code, &text).await?;
        Ok(())
    }

    async fn data(&mut self) -> Result<(), Exit> {
        let refusal = if self.mail_from.is_none() {
            Some("5.5.1 Error: need MAIL command")
        } else if self.rcpt_to.is_empty() {
            Some("5.5.1 Error: need RCPT command")
        } else {
            None
        };
        if let Some(text) = refusal {
            self.write_reply(503, text).await?;
            return Ok(());
        }
        let action = self.decide(&Event::Data, self.counters());
        let (code, text) = resolve(action, 354, || "End data with <CR><LF>.<CR><LF>".to_owned())?;
        self.write_reply(code, &text).await?;
        if code != 354 {
            return Ok(());
        }
        let data = if self.lenient() {
            self.read_lenient_content().await?
        } else {
            self.read_content().await?
        };
        let attempt = self.shared.data_attempts.fetch_add(1, Ordering::SeqCst) + 1;
        self.shared.changed.notify_waiters();
        let mail_from = self.mail_from.take().unwrap_or_default();
        let rcpt_to = std::mem::take(&mut self.rcpt_to);
        let event = Event::DataEnd {
            mail_from: &mail_from,
            rcpt_to: &rcpt_to,
            data: &data,
        };
        let counters = Counters {
            data_attempt: attempt,
            ..self.counters()
        };
        let action = self.decide(&event, counters);
        let (code, text) = resolve(action, 250, || format!("2.0.0 Ok: queued as {attempt}"))?;
        if is_2xx(code) {
            // Recorded before answering, so a client whose send returned
            // successfully always finds its message here.
            lock(&self.shared.received).push(ReceivedMail {
                mail_from,
                rcpt_to,
                data,
                auth_user: self.auth_user.clone(),
                started_at: self.mail_at.take().unwrap_or_else(Instant::now),
            });
            self.shared.changed.notify_waiters();
        }
        self.write_reply(code, &text).await?;
        Ok(())
    }

    /// Reads message content up to the terminating `.` line, undoing dot
    /// stuffing. Only CRLF counts as a line break here, like in lettre's
    /// encoder, so a bare LF followed by `.` is plain content.
    async fn read_content(&mut self) -> Result<Vec<u8>, Exit> {
        let mut data = Vec::new();
        loop {
            let start = data.len();
            let n = self.reader.read_until(b'\n', &mut data).await?;
            if n == 0 {
                return Err(Exit::Close);
            }
            let at_line_start = start == 0 || data[..start].ends_with(b"\r\n");
            if at_line_start && data[start] == b'.' {
                if &data[start..] == b".\r\n" {
                    data.truncate(start);
                    return Ok(data);
                }
                data.remove(start);
            }
        }
    }

    async fn other(&mut self, verb: &str, line: &str) -> Result<(), Exit> {
        let action = self.decide(&Event::Other(line), self.counters());
        let (code, text) = match verb {
            "RSET" | "NOOP" => resolve(action, 250, || "2.0.0 Ok".to_owned())?,
            "QUIT" => resolve(action, 221, || "2.0.0 Bye".to_owned())?,
            _ => resolve(action, 500, || {
                "5.5.2 Error: command not recognized".to_owned()
            })?,
        };
        if verb == "RSET" && is_2xx(code) {
            self.reset_transaction();
        }
        self.write_reply(code, &text).await?;
        if verb == "QUIT" {
            return Err(Exit::Close);
        }
        Ok(())
    }

    fn starttls_offered(&self) -> bool {
        !self.secure && matches!(self.shared.tls, Some((TlsMode::Starttls, _)))
    }

    /// RFC 3207: 220, then a TLS handshake on the same socket; the client starts
    /// over with EHLO.
    async fn starttls(&mut self) -> Result<(), Exit> {
        let acceptor = match &self.shared.tls {
            Some((_, acceptor)) if self.starttls_offered() => acceptor.clone(),
            _ => {
                self.write_reply(502, "5.5.1 Error: STARTTLS not available")
                    .await?;
                return Ok(());
            }
        };
        self.write_reply(220, "2.0.0 Ready to start TLS").await?;
        // Take the plain halves out (leaving unconnected stand-ins), rejoin them and
        // put TLS on top.
        let (stand_in_reader, stand_in_writer) =
            tokio::io::split(Box::new(tokio::io::duplex(1).0) as Box<dyn Stream>);
        let reader = std::mem::replace(&mut self.reader, BufReader::new(stand_in_reader));
        let writer = std::mem::replace(&mut self.writer, stand_in_writer);
        let plain = reader.into_inner().unsplit(writer);
        let tls = acceptor.accept(plain).await.map_err(|_| Exit::Close)?;
        let (reader, writer) = tokio::io::split(Box::new(tls) as Box<dyn Stream>);
        self.reader = BufReader::with_capacity(64 * 1024, reader);
        self.writer = writer;
        self.secure = true;
        self.greeted = false;
        self.auth_user = None;
        self.reset_transaction();
        Ok(())
    }

    fn reset_transaction(&mut self) {
        self.mail_from = None;
        self.mail_at = None;
        self.rcpt_to.clear();
    }
}

fn event_name(event: &Event<'_>) -> &'static str {
    match event {
        Event::Connect => "Connect",
        Event::Ehlo(_) => "Ehlo",
        Event::MailFrom(_) => "MailFrom",
        Event::RcptTo(_) => "RcptTo",
        Event::Data => "Data",
        Event::DataEnd { .. } => "DataEnd",
        Event::Auth { .. } => "Auth",
        Event::Other(_) => "Other",
    }
}

/// Extracts the address from `FROM:<addr> PARAMS` / `TO:<addr>`; the keyword
/// is matched ignoring case, and a bare address without brackets is tolerated
/// because some clients send one.
fn parse_path<'a>(arg: &'a str, keyword: &str) -> Option<&'a str> {
    let head = arg.get(..keyword.len())?;
    if !head.eq_ignore_ascii_case(keyword) {
        return None;
    }
    let rest = arg[keyword.len()..].trim_start();
    match rest.strip_prefix('<') {
        Some(inner) => inner.find('>').map(|end| &inner[..end]),
        None => rest.split_whitespace().next(),
    }
}

/// Standard-alphabet base64, padding optional; `None` on anything else.
fn base64_decode(input: &str) -> Option<Vec<u8>> {
    let digits = input.trim_end_matches('=');
    let mut out = Vec::with_capacity(digits.len() * 3 / 4);
    let mut acc: u32 = 0;
    let mut bits = 0;
    for c in digits.bytes() {
        let value = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        };
        acc = (acc << 6) | u32::from(value);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push(u8::try_from(acc >> bits).ok()?);
            acc &= (1 << bits) - 1;
        }
    }
    // A single leftover digit carries fewer than 8 bits: not valid base64.
    if bits >= 6 {
        return None;
    }
    Some(out)
}
