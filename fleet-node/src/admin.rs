//! The admin HTTP endpoint (DESIGN.md section 5): what operators and their tools ask a node.
//!
//! | path | answers |
//! |---|---|
//! | `GET /metrics` | the node's metrics in Prometheus text format (names in [`crate::metrics`]) |
//! | `GET /healthz` | 200 while the node loop answers, 503 once it stopped or hangs |
//! | `GET /readyz` | 200 once the node is active in its local copy of the catalog, 503 before (with why) |
//! | `GET /status` | JSON of [`Fleet::status`]: nodes, zones, groups, leaders |
//!
//! It listens on loopback by default (the daemon's `--admin 127.0.0.1:7080`): nothing here is
//! authenticated, so expose it further only behind something that is.
//!
//! ```no_run
//! # async fn example(fleet: fleet_node::runtime::Fleet) -> Result<(), fleet_node::admin::AdminError> {
//! use fleet_node::admin::AdminServer;
//!
//! let admin = AdminServer::start(fleet, "127.0.0.1:0".parse().unwrap()).await?;
//! println!("admin endpoint on http://{}", admin.local_addr());
//! // ...
//! admin.shutdown().await?;
//! # Ok(()) }
//! ```
//!
//! # Decisions
//!
//! - A process has one metrics recorder ([`metrics::set_global_recorder`]); the first
//!   [`AdminServer`] (or [`prometheus_handle`]) installs a Prometheus recorder and every later one
//!   renders the same. If the embedding program installed a recorder of its own first, fleet's
//!   metrics go to that one and `/metrics` answers 503 saying so.
//! - Open connections are bounded by [`ADMIN_CONNECTIONS_MAX`] (a semaphore permit per
//!   connection, as mini-redis does); beyond it new connections wait in the listen backlog.
//! - `/healthz` and `/readyz` ask worker 0 (through [`Fleet::health`], which does not walk the
//!   groups) and give it [`NODE_ANSWER_TIMEOUT`] to answer: a worker that hangs is as unhealthy
//!   as one that stopped. A storage failure in any worker stops every worker and shows in the
//!   health answer.

use std::future::IntoFuture;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::serve::Listener;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use placement::NodeState;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::metrics as names;
use crate::runtime::{Fleet, NodeHealth, Status};

/// Admin connections open at once, at most. Scrapers and probes hold one or two each; the rest
/// wait in the listen backlog until one closes.
pub const ADMIN_CONNECTIONS_MAX: usize = 64;

/// How long a handler waits for the node loop to answer before reporting it unhealthy.
pub const NODE_ANSWER_TIMEOUT: Duration = Duration::from_secs(5);

/// How long [`AdminServer::shutdown`] waits for open connections to finish before dropping them.
pub const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(5);

/// The content type of Prometheus' text exposition format.
const PROMETHEUS_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// What went wrong with the admin endpoint. Messages say what happened and what to do.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AdminError {
    /// The address could not be bound.
    #[error("cannot listen on {addr} for the admin endpoint (choose another address with --admin)")]
    Bind {
        /// The address asked for.
        addr: SocketAddr,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// The server stopped with an error.
    #[error("the admin endpoint failed")]
    Serve(#[source] io::Error),
}

/// The process' Prometheus handle, installing the recorder on first use (and describing every
/// metric of [`crate::metrics`]). `None` when another recorder was installed first.
pub fn prometheus_handle() -> Option<&'static PrometheusHandle> {
    static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();
    HANDLE.get_or_init(install_recorder).as_ref()
}

fn install_recorder() -> Option<PrometheusHandle> {
    let builder = PrometheusBuilder::new()
        .set_buckets_for_metric(
            Matcher::Full(names::STORAGE_BATCH_ENTRIES.to_owned()),
            names::STORAGE_BATCH_ENTRIES_BUCKETS,
        )
        .and_then(|b| {
            b.set_buckets_for_metric(
                Matcher::Full(names::STORAGE_FSYNC_SECONDS.to_owned()),
                names::STORAGE_FSYNC_SECONDS_BUCKETS,
            )
        })
        .expect("the bucket lists of crate::metrics are not empty");
    match builder.install_recorder() {
        Ok(handle) => {
            names::describe_metrics();
            metrics::gauge!(names::BUILD_INFO, "version" => env!("CARGO_PKG_VERSION")).set(1.0);
            Some(handle)
        }
        Err(e) => {
            warn!(error = %e, "cannot install the Prometheus recorder; /metrics will answer 503");
            None
        }
    }
}

/// The admin endpoint's routes, for a program that serves them itself. [`AdminServer`] serves
/// them with the connection bound.
pub fn router(fleet: Fleet) -> Router {
    // Install the recorder now, so metrics recorded before the first scrape are kept.
    let _ = prometheus_handle();
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/status", get(status))
        .with_state(fleet)
}

/// A running admin endpoint. Dropping it stops the server without waiting;
/// [`AdminServer::shutdown`] stops it and waits.
#[derive(Debug)]
pub struct AdminServer {
    local_addr: SocketAddr,
    cancel: CancellationToken,
    task: Option<JoinHandle<io::Result<()>>>,
}

impl AdminServer {
    /// Binds `addr` (port 0 picks a free port; see [`AdminServer::local_addr`]) and serves the
    /// admin endpoint of `fleet` until [`AdminServer::shutdown`].
    pub async fn start(fleet: Fleet, addr: SocketAddr) -> Result<AdminServer, AdminError> {
        let bind_error = |source| AdminError::Bind { addr, source };
        let listener = TcpListener::bind(addr).await.map_err(bind_error)?;
        let local_addr = listener.local_addr().map_err(bind_error)?;
        let listener = LimitedListener {
            inner: listener,
            permits: Arc::new(Semaphore::new(ADMIN_CONNECTIONS_MAX)),
        };
        let cancel = CancellationToken::new();
        let serve = axum::serve(listener, router(fleet))
            .with_graceful_shutdown(cancel.clone().cancelled_owned())
            .into_future();
        let task = tokio::spawn(serve);
        info!(admin = %local_addr, "admin endpoint listening");
        Ok(AdminServer {
            local_addr,
            cancel,
            task: Some(task),
        })
    }

    /// The address the endpoint listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Stops accepting connections and waits up to [`SHUTDOWN_TIMEOUT`] for open ones to finish
    /// their requests; connections still open then are dropped.
    pub async fn shutdown(mut self) -> Result<(), AdminError> {
        self.cancel.cancel();
        let Some(mut task) = self.task.take() else {
            return Ok(());
        };
        match tokio::time::timeout(SHUTDOWN_TIMEOUT, &mut task).await {
            Ok(Ok(result)) => result.map_err(AdminError::Serve),
            Ok(Err(join)) => Err(AdminError::Serve(io::Error::other(join))),
            Err(_elapsed) => {
                warn!(timeout = ?SHUTDOWN_TIMEOUT, "admin connections still open at shutdown; dropping them");
                task.abort();
                Ok(())
            }
        }
    }
}

impl Drop for AdminServer {
    fn drop(&mut self) {
        self.cancel.cancel();
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

fn count(path: &'static str) {
    metrics::counter!(names::ADMIN_REQUESTS_TOTAL, "path" => path).increment(1);
}

/// The node's status, or the 503 that says why there is none.
async fn node_status(fleet: &Fleet) -> Result<Status, Response> {
    answer(fleet.status()).await
}

async fn node_health(fleet: &Fleet) -> Result<NodeHealth, Response> {
    answer(fleet.health()).await
}

/// The node loop's answer, or 503 if it is not running or does not answer in time.
async fn answer<T>(
    request: impl std::future::Future<Output = Result<T, crate::runtime::FleetError>>,
) -> Result<T, Response> {
    match tokio::time::timeout(NODE_ANSWER_TIMEOUT, request).await {
        Ok(Ok(answer)) => Ok(answer),
        Ok(Err(e)) => Err(unavailable(format!("the node loop is not running: {e}"))),
        Err(_elapsed) => Err(unavailable(format!(
            "the node loop did not answer within {NODE_ANSWER_TIMEOUT:?}"
        ))),
    }
}

fn unavailable(why: String) -> Response {
    (StatusCode::SERVICE_UNAVAILABLE, format!("{why}\n")).into_response()
}

async fn healthz(State(fleet): State<Fleet>) -> Response {
    count("/healthz");
    match node_health(&fleet).await {
        Ok(h) if h.failed.is_none() => (StatusCode::OK, "ok\n").into_response(),
        Ok(h) => unavailable(format!(
            "the node's storage failed: {}",
            h.failed.unwrap_or_default()
        )),
        Err(response) => response,
    }
}

async fn readyz(State(fleet): State<Fleet>) -> Response {
    count("/readyz");
    let health = match node_health(&fleet).await {
        Ok(health) => health,
        Err(response) => return response,
    };
    match readiness(&health) {
        Ok(()) => (StatusCode::OK, "ready\n").into_response(),
        Err(why) => unavailable(format!("not ready: {why}")),
    }
}

/// Ready means: this node holds a copy of the catalog, and the catalog lists it as active.
fn readiness(health: &NodeHealth) -> Result<(), String> {
    if !health.has_catalog {
        return Err(format!(
            "node {:?} holds no catalog yet (it has not activated, or is still joining)",
            health.node
        ));
    }
    let Some(state) = health.state else {
        return Err(format!(
            "node {:?} is not in the catalog yet (it has not activated)",
            health.node
        ));
    };
    if state != NodeState::Active {
        return Err(format!(
            "node {:?} is {state:?} in the catalog, not active",
            health.node
        ));
    }
    Ok(())
}

async fn status(State(fleet): State<Fleet>) -> Response {
    count("/status");
    match node_status(&fleet).await {
        Ok(status) => axum::Json(status).into_response(),
        Err(response) => response,
    }
}

async fn metrics() -> Response {
    count("/metrics");
    let Some(handle) = prometheus_handle() else {
        return unavailable(
            "this process installed another metrics recorder before fleet's; fleet's metrics are \
             recorded there"
                .to_owned(),
        );
    };
    // Histograms are drained into their buckets here; nothing else runs upkeep.
    handle.run_upkeep();
    (
        [(header::CONTENT_TYPE, PROMETHEUS_CONTENT_TYPE)],
        handle.render(),
    )
        .into_response()
}

/// A TCP listener that holds a permit per open connection: at most [`ADMIN_CONNECTIONS_MAX`].
struct LimitedListener {
    inner: TcpListener,
    permits: Arc<Semaphore>,
}

impl Listener for LimitedListener {
    type Io = LimitedStream;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        let permit = Arc::clone(&self.permits)
            .acquire_owned()
            .await
            .expect("the admin connection semaphore is never closed");
        let (stream, addr) = Listener::accept(&mut self.inner).await;
        (
            LimitedStream {
                stream,
                _permit: permit,
            },
            addr,
        )
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.inner.local_addr()
    }
}

/// A connection and its permit, released when the connection is dropped.
struct LimitedStream {
    stream: TcpStream,
    _permit: OwnedSemaphorePermit,
}

impl AsyncRead for LimitedStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for LimitedStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}
