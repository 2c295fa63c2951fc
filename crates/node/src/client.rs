//! The client of the internal API, used by nodes to call each other and by the CLI. Every
//! request carries the cluster secret and has a deadline.

use crate::error::{ErrorBody, ErrorEnvelope};
use crate::status::NodeStatus;
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::time::Duration;
use tandem_pool::cms::CmsSnapshot;

/// The header that carries the cluster secret between nodes.
pub const SECRET_HEADER: &str = "x-tandem-secret";
/// The header that names the calling node (absent on the CLI's requests).
pub const NODE_HEADER: &str = "x-tandem-node";
/// Default deadline of one internal request.
pub const REQUEST_TIMEOUT_MS: u64 = 5_000;
/// How long an idle pooled connection is kept: shorter than the time a node keeps a silent
/// connection (`HTTP_IDLE`), so the client closes it first and never sends a request on a
/// connection the node is closing.
const POOL_IDLE: Duration = Duration::from_secs(60);
const _: () = assert!(POOL_IDLE.as_secs() < crate::http_serve::HTTP_IDLE.as_secs());

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// No answer: connection refused, reset, or past the deadline. `sent` is false when the
    /// request surely never reached the node (it did nothing).
    #[error("{addr} is unreachable: {message}")]
    Unreachable {
        addr: String,
        message: String,
        sent: bool,
    },
    /// The node answered with an error.
    #[error("{}", body.message)]
    Api { status: u16, body: ErrorBody },
    /// The node answered something this client cannot read.
    #[error("{addr} answered an unreadable document: {message}")]
    Decode { addr: String, message: String },
    /// This side failed to keep what the node sent (a seed written to a full disk, say): the
    /// node is not at fault.
    #[error("{message}")]
    Local { message: String },
}

/// The message of an `Unreachable` whose request was sent and got no answer before its
/// deadline: a hung node, as opposed to one that refused or reset the connection.
pub const NO_ANSWER: &str = "no answer before the deadline";

/// Where a node's copy of a database stands: `GET /internal/v1/db/{db}/role`.
#[derive(Clone, Debug, serde::Deserialize, Serialize)]
pub struct CopyRole {
    pub node: String,
    pub database: String,
    pub role: String,
    pub epoch: u64,
    pub lsn: u64,
    /// Commit time of the copy's last record (ms since the Unix epoch).
    #[serde(default)]
    pub last_time_ms: i64,
    /// Accepts writes now (a primary with its lease, not fenced).
    pub writable: bool,
    /// The first LSN of the copy's epoch: a recovered copy's records before it are what the
    /// recovery kept (the data-loss point is the LSN before it).
    #[serde(default)]
    pub epoch_first_lsn: Option<u64>,
    /// Why a primary refuses new writes for now (a planned failover or a failback paused it).
    #[serde(default)]
    pub paused: Option<String>,
    /// The size of the copy's database file: about what a full backup of it takes.
    #[serde(default)]
    pub file_bytes: u64,
}

/// A procedure call as the internal API reads it (`procedures::Call`).
#[derive(Serialize)]
struct CallBody<'a, A> {
    procedure: &'a str,
    args: &'a A,
}

/// A procedure call's answer: its result and the database's LSN after it.
#[derive(Debug, serde::Deserialize, Serialize)]
pub struct CallAnswer<T> {
    pub result: T,
    pub lsn: u64,
}

impl ClientError {
    /// True when the request surely had no effect and may be sent elsewhere: it never reached
    /// the node, or the node refused it because its copy is not (or no longer) primary.
    pub fn retry_elsewhere(&self) -> bool {
        match self {
            ClientError::Unreachable { sent, .. } => !sent,
            ClientError::Api { body, .. } => {
                matches!(
                    body.code.as_str(),
                    "not_primary" | "stale_epoch" | "partitioned"
                )
            }
            ClientError::Decode { .. } | ClientError::Local { .. } => false,
        }
    }
}

#[derive(Clone)]
pub struct Client {
    http: reqwest::Client,
    secret: String,
    /// The calling node's name, sent with every request.
    node: Option<String>,
    /// Fault injection: while set, this client reaches nobody (a network cut).
    isolated: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl Client {
    pub fn new(secret: &str) -> Client {
        Client {
            http: reqwest::Client::builder()
                .timeout(Duration::from_millis(REQUEST_TIMEOUT_MS))
                .connect_timeout(Duration::from_millis(1_000))
                .pool_idle_timeout(POOL_IDLE)
                .no_proxy()
                .build()
                .expect("an HTTP client without TLS builds"),
            secret: secret.to_string(),
            node: None,
            isolated: Default::default(),
        }
    }

    /// The client a node uses: its requests name it.
    pub(crate) fn for_node(secret: &str, node: &str) -> Client {
        Client {
            node: Some(node.to_string()),
            ..Client::new(secret)
        }
    }

    pub(crate) fn set_isolated(&self, isolated: bool) {
        self.isolated
            .store(isolated, std::sync::atomic::Ordering::SeqCst);
    }

    pub(crate) fn isolated(&self) -> bool {
        self.isolated.load(std::sync::atomic::Ordering::SeqCst)
    }

    async fn raw(
        &self,
        addr: &str,
        req: reqwest::RequestBuilder,
        timeout: Option<Duration>,
    ) -> Result<reqwest::Response, ClientError> {
        if self.isolated() {
            return Err(ClientError::Unreachable {
                addr: addr.to_string(),
                message: "this node is isolated from the others (fault injection)".into(),
                sent: false,
            });
        }
        let mut req = req.header(SECRET_HEADER, &self.secret);
        if let Some(n) = &self.node {
            req = req.header(NODE_HEADER, n);
        }
        if let Some(t) = timeout {
            req = req.timeout(t);
        }
        req.send().await.map_err(|e| ClientError::Unreachable {
            addr: addr.to_string(),
            message: if e.is_timeout() {
                NO_ANSWER.into()
            } else {
                root(&e)
            },
            sent: !e.is_connect(),
        })
    }

    async fn send<T: DeserializeOwned>(
        &self,
        addr: &str,
        req: reqwest::RequestBuilder,
        timeout: Option<Duration>,
    ) -> Result<T, ClientError> {
        let resp = self.raw(addr, req, timeout).await?;
        let bytes = answer(addr, resp).await?;
        serde_json::from_slice(&bytes).map_err(|e| ClientError::Decode {
            addr: addr.to_string(),
            message: e.to_string(),
        })
    }

    /// Runs a domain procedure on the database `db` hosted by the node at `addr`. The arguments
    /// are written straight into the request's body.
    pub async fn call<T: DeserializeOwned, A: Serialize>(
        &self,
        addr: &str,
        db: &str,
        procedure: &str,
        args: &A,
    ) -> Result<CallAnswer<T>, ClientError> {
        let body = CallBody { procedure, args };
        let req = self
            .http
            .post(format!("http://{addr}/internal/v1/db/{db}/call"))
            .json(&body);
        self.send(addr, req, None).await
    }

    /// Events of `db` after `after` (or, with a negative `after`, where the feed stands),
    /// waiting up to `wait_ms` for some.
    pub async fn feed<T: DeserializeOwned>(
        &self,
        addr: &str,
        db: &str,
        after: i64,
        wait_ms: u64,
    ) -> Result<T, ClientError> {
        let req = self.http.get(format!(
            "http://{addr}/internal/v1/db/{db}/feed?after={after}&wait_ms={wait_ms}"
        ));
        self.send(
            addr,
            req,
            Some(Duration::from_millis(wait_ms + REQUEST_TIMEOUT_MS)),
        )
        .await
    }

    /// The node's own view of itself.
    pub async fn status(&self, addr: &str, timeout: Duration) -> Result<NodeStatus, ClientError> {
        let req = self.http.get(format!("http://{addr}/internal/v1/status"));
        self.send(addr, req, Some(timeout)).await
    }

    /// The CMS snapshot from the node holding the writable CMS copy.
    pub async fn cms_snapshot(
        &self,
        addr: &str,
        timeout: Duration,
    ) -> Result<CmsSnapshot, ClientError> {
        let req = self
            .http
            .get(format!("http://{addr}/internal/v1/cms/snapshot"));
        self.send(addr, req, Some(timeout)).await
    }

    /// The role and position of `db`'s copy on the node at `addr`.
    pub async fn copy_role(
        &self,
        addr: &str,
        db: &str,
        timeout: Duration,
    ) -> Result<CopyRole, ClientError> {
        let req = self
            .http
            .get(format!("http://{addr}/internal/v1/db/{db}/role"));
        self.send(addr, req, Some(timeout)).await
    }

    /// The roles of `db`'s copies on the database nodes of `topology` but `except` (the
    /// asking node itself), asked at once, each given `timeout`: the nodes that answered, in
    /// the topology's order.
    pub async fn copy_roles(
        &self,
        topology: &tandem_topology::Topology,
        db: &str,
        except: Option<&str>,
        timeout: Duration,
    ) -> Vec<CopyRole> {
        self.copy_role_answers(topology, db, except, timeout)
            .await
            .into_iter()
            .filter_map(|(_, a)| a.ok())
            .collect()
    }

    /// What every db node but `except` answers for its copy of `db`, each with its node's
    /// name: the roles, and why the others gave none (silent, or without a copy).
    pub async fn copy_role_answers(
        &self,
        topology: &tandem_topology::Topology,
        db: &str,
        except: Option<&str>,
        timeout: Duration,
    ) -> Vec<(String, Result<CopyRole, ClientError>)> {
        let nodes: Vec<_> = topology
            .nodes_with(tandem_topology::Role::Db)
            .into_iter()
            .filter(|n| Some(n.name.as_str()) != except)
            .collect();
        let answers = futures_util::future::join_all(
            nodes
                .iter()
                .map(|n| self.copy_role(&n.address, db, timeout)),
        )
        .await;
        nodes
            .into_iter()
            .map(|n| n.name.clone())
            .zip(answers)
            .collect()
    }

    /// Asks the witness at `addr`.
    pub async fn witness(
        &self,
        addr: &str,
        request: &crate::witness::WitnessRequest,
    ) -> Result<crate::witness::WitnessAnswer, ClientError> {
        let req = self
            .http
            .post(format!("http://{addr}/internal/v1/witness"))
            .json(request);
        self.send(addr, req, Some(crate::witness::WITNESS_TIMEOUT))
            .await
    }

    /// A mirror's pull: its position and hardened LSN out, records (binary) back.
    pub async fn pull(
        &self,
        addr: &str,
        db: &str,
        request: &tandem_store::replication::PullRequest,
        wait_ms: u64,
    ) -> Result<tandem_store::replication::PullAnswer, ClientError> {
        let req = self
            .http
            .post(format!(
                "http://{addr}/internal/v1/mirroring/{db}/pull?wait_ms={wait_ms}"
            ))
            .json(request);
        let resp = self
            .raw(
                addr,
                req,
                Some(Duration::from_millis(wait_ms + REQUEST_TIMEOUT_MS)),
            )
            .await?;
        let bytes = answer(addr, resp).await?;
        tandem_store::replication::decode_answer(&bytes).map_err(|e| ClientError::Decode {
            addr: addr.to_string(),
            message: e.to_string(),
        })
    }

    /// A mirror tells its primary what it hardened, as soon as its fsync ends (beside its
    /// pulls, which may be waiting for new records).
    pub async fn hardened(
        &self,
        addr: &str,
        db: &str,
        report: &crate::mirroring::HardenedReport,
    ) -> Result<(), ClientError> {
        let req = self
            .http
            .post(format!("http://{addr}/internal/v1/mirroring/{db}/hardened"))
            .json(report);
        self.send::<serde_json::Value>(addr, req, Some(Duration::from_millis(REQUEST_TIMEOUT_MS)))
            .await
            .map(|_| ())
    }

    /// Streams a seed backup of `db` from its primary at `addr` into `file`; its size.
    pub async fn seed(
        &self,
        addr: &str,
        db: &str,
        file: &std::path::Path,
    ) -> Result<u64, ClientError> {
        use tokio::io::AsyncWriteExt;
        let req = self
            .http
            .get(format!("http://{addr}/internal/v1/mirroring/{db}/seed"));
        let mut resp = self.raw(addr, req, Some(Duration::from_secs(3600))).await?;
        if !resp.status().is_success() {
            return Err(answer(addr, resp)
                .await
                .err()
                .unwrap_or(ClientError::Decode {
                    addr: addr.to_string(),
                    message: "the seed request failed".into(),
                }));
        }
        let io = |e: std::io::Error| ClientError::Local {
            message: format!("writing the seed from {addr} to {}: {e}", file.display()),
        };
        let mut out = tokio::fs::File::create(file).await.map_err(io)?;
        let mut total = 0u64;
        while let Some(chunk) = resp.chunk().await.map_err(|e| ClientError::Unreachable {
            addr: addr.to_string(),
            message: root(&e),
            sent: true,
        })? {
            out.write_all(&chunk).await.map_err(io)?;
            total += chunk.len() as u64;
        }
        out.sync_all().await.map_err(io)?;
        Ok(total)
    }

    /// Sends a JSON request to the internal API and reads the JSON answer.
    pub async fn json<T: DeserializeOwned>(
        &self,
        addr: &str,
        method: reqwest::Method,
        path: &str,
        body: Option<&serde_json::Value>,
        timeout: Duration,
    ) -> Result<T, ClientError> {
        let mut req = self.http.request(method, format!("http://{addr}{path}"));
        if let Some(b) = body {
            req = req.json(b);
        }
        self.send(addr, req, Some(timeout)).await
    }

    /// True when the node answers its health check.
    pub async fn healthy(&self, addr: &str, timeout: Duration) -> bool {
        let req = self.http.get(format!("http://{addr}/health"));
        self.send::<serde_json::Value>(addr, req, Some(timeout))
            .await
            .is_ok()
    }
}

/// The body of a successful answer, or the node's JSON error (or a description of what it sent
/// instead of one).
async fn answer(addr: &str, resp: reqwest::Response) -> Result<axum::body::Bytes, ClientError> {
    let status = resp.status();
    let bytes = resp.bytes().await.map_err(|e| ClientError::Unreachable {
        addr: addr.to_string(),
        message: root(&e),
        sent: true,
    })?;
    if status.is_success() {
        return Ok(bytes);
    }
    let body = serde_json::from_slice::<ErrorEnvelope>(&bytes)
        .map(|e| e.error)
        .unwrap_or_else(|_| ErrorBody {
            code: "upstream".into(),
            message: format!(
                "{addr} answered {status}: {} (not a tandem node's error: another program on \
                 its address?)",
                one_line(&String::from_utf8_lossy(&bytes), 120)
            ),
        });
    Err(ClientError::Api {
        status: status.as_u16(),
        body,
    })
}

/// `text` on one line (whitespace runs, newlines among them, as one space; control
/// characters dropped) and cut at `max` characters: what another program answered goes into a
/// status table's cell or an error's line, not a page of HTML.
fn one_line(text: &str, max: usize) -> String {
    let words: Vec<&str> = text.split_whitespace().collect();
    let joined: String = words
        .join(" ")
        .chars()
        .filter(|c| !c.is_control())
        .collect();
    match joined.char_indices().nth(max) {
        Some((cut, _)) => format!("{}…", &joined[..cut]),
        None => joined,
    }
}

/// The innermost cause of an HTTP client error: "connection refused", not "error sending request".
fn root(e: &(dyn std::error::Error + 'static)) -> String {
    let mut cur = e;
    while let Some(next) = cur.source() {
        cur = next;
    }
    cur.to_string()
}

/// A client of the users' API (what a chat client or a web page uses), acting as one user.
#[derive(Clone)]
pub struct UserApi {
    http: reqwest::Client,
    addr: String,
    token: String,
}

impl UserApi {
    pub fn new(addr: &str, token: &str) -> UserApi {
        UserApi {
            http: reqwest::Client::builder()
                .timeout(Duration::from_millis(REQUEST_TIMEOUT_MS))
                .pool_idle_timeout(POOL_IDLE)
                .no_proxy()
                .build()
                .expect("an HTTP client without TLS builds"),
            addr: addr.to_string(),
            token: token.to_string(),
        }
    }

    /// Sends `method path` with an optional JSON body; the JSON answer, or the API's error.
    pub async fn request(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<&serde_json::Value>,
    ) -> Result<serde_json::Value, ClientError> {
        let mut req = self
            .http
            .request(method, format!("http://{}{path}", self.addr))
            .bearer_auth(&self.token);
        if let Some(b) = body {
            req = req.json(b);
        }
        let resp = req.send().await.map_err(|e| ClientError::Unreachable {
            addr: self.addr.clone(),
            message: root(&e),
            sent: !e.is_connect(),
        })?;
        let bytes = answer(&self.addr, resp).await?;
        if bytes.is_empty() {
            return Ok(serde_json::Value::Null);
        }
        serde_json::from_slice(&bytes).map_err(|e| ClientError::Decode {
            addr: self.addr.clone(),
            message: e.to_string(),
        })
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn another_programs_page_is_one_short_line() {
        let page = "<!DOCTYPE HTML>\n<html>\n  <head>\t<title>Error</title>\n".repeat(20);
        let line = super::one_line(&page, 40);
        assert!(!line.contains('\n') && !line.contains('\t'), "{line}");
        assert_eq!(line.chars().count(), 41, "{line}");
        assert!(line.ends_with('…'));
        assert_eq!(super::one_line(" a \r\n b ", 40), "a b");
    }
}
