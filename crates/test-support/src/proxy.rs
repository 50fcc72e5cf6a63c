//! A TCP proxy that can be cut, black-holed and restored: stands in for a PostgreSQL or
//! RabbitMQ outage without disturbing the real servers other tests share.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::AbortHandle;

const UP: u8 = 0;
const CUT: u8 = 1;
const BLACK_HOLE: u8 = 2;

struct State {
    mode: AtomicU8,
    connections: Mutex<Vec<AbortHandle>>,
}

/// Forwards 127.0.0.1:<port> to a target while up; while cut, closes every
/// connection it has and every new one at once; while black-holed, keeps every
/// connection open and accepts new ones, but forwards nothing (a partition, or a
/// server that hangs).
pub struct TcpProxy {
    addr: SocketAddr,
    state: Arc<State>,
    accept: AbortHandle,
}

impl Drop for TcpProxy {
    fn drop(&mut self) {
        self.accept.abort();
        self.cut();
    }
}

impl TcpProxy {
    pub async fn start(target: SocketAddr) -> TcpProxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let addr = listener.local_addr().expect("proxy address");
        let state = Arc::new(State {
            mode: AtomicU8::new(UP),
            connections: Mutex::new(Vec::new()),
        });
        let accept_state = state.clone();
        let accept = tokio::spawn(async move {
            while let Ok((inbound, _)) = listener.accept().await {
                let mode = accept_state.mode.load(Ordering::SeqCst);
                if mode == CUT {
                    drop(inbound);
                    continue;
                }
                let state = accept_state.clone();
                let task = tokio::spawn(async move {
                    if mode == BLACK_HOLE {
                        swallow(inbound).await;
                        return;
                    }
                    if let Ok(outbound) = TcpStream::connect(target).await {
                        let (in_read, in_write) = inbound.into_split();
                        let (out_read, out_write) = outbound.into_split();
                        tokio::select! {
                            () = pump(in_read, out_write, &state) => {}
                            () = pump(out_read, in_write, &state) => {}
                        }
                    }
                });
                accept_state
                    .connections
                    .lock()
                    .unwrap()
                    .push(task.abort_handle());
            }
        })
        .abort_handle();
        TcpProxy {
            addr,
            state,
            accept,
        }
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// Breaks every connection and refuses service until `restore`.
    pub fn cut(&self) {
        self.state.mode.store(CUT, Ordering::SeqCst);
        self.close_all();
    }

    /// Forwards nothing, in either direction, on old and new connections alike,
    /// while keeping them all open, until `restore`.
    pub fn black_hole(&self) {
        self.state.mode.store(BLACK_HOLE, Ordering::SeqCst);
    }

    /// Serves again. Connections that lived through a black hole lost bytes on the
    /// way, so they are closed; clients connect afresh.
    pub fn restore(&self) {
        if self.state.mode.swap(UP, Ordering::SeqCst) == BLACK_HOLE {
            self.close_all();
        }
    }

    fn close_all(&self) {
        for task in self.state.connections.lock().unwrap().drain(..) {
            task.abort();
        }
    }
}

/// Copies `from` to `to`, dropping what arrives while the proxy is black-holed.
async fn pump(mut from: impl AsyncRead + Unpin, mut to: impl AsyncWrite + Unpin, state: &State) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        if state.mode.load(Ordering::SeqCst) == BLACK_HOLE {
            continue;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

/// Reads and drops everything, never answering.
async fn swallow(mut stream: TcpStream) {
    let mut buf = vec![0u8; 16 * 1024];
    while matches!(stream.read(&mut buf).await, Ok(n) if n > 0) {}
}
