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
/// Default deadline of one internal request.
pub const REQUEST_TIMEOUT_MS: u64 = 5_000;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// No answer: connection refused, reset, or past the deadline.
    #[error("{addr} is unreachable: {message}")]
    Unreachable { addr: String, message: String },
    /// The node answered with an error.
    #[error("{}", body.message)]
    Api { status: u16, body: ErrorBody },
    /// The node answered something this client cannot read.
    #[error("{addr} answered an unreadable document: {message}")]
    Decode { addr: String, message: String },
}

/// A procedure call's answer: its result and the database's LSN after it.
#[derive(Debug, serde::Deserialize, Serialize)]
pub struct CallAnswer<T> {
    pub result: T,
    pub lsn: u64,
}

#[derive(Clone)]
pub struct Client {
    http: reqwest::Client,
    secret: String,
}

impl Client {
    pub fn new(secret: &str) -> Client {
        Client {
            http: reqwest::Client::builder()
                .timeout(Duration::from_millis(REQUEST_TIMEOUT_MS))
                .connect_timeout(Duration::from_millis(1_000))
                .no_proxy()
                .build()
                .expect("an HTTP client without TLS builds"),
            secret: secret.to_string(),
        }
    }

    async fn send<T: DeserializeOwned>(
        &self,
        addr: &str,
        req: reqwest::RequestBuilder,
        timeout: Option<Duration>,
    ) -> Result<T, ClientError> {
        let mut req = req.header(SECRET_HEADER, &self.secret);
        if let Some(t) = timeout {
            req = req.timeout(t);
        }
        let resp = req.send().await.map_err(|e| ClientError::Unreachable {
            addr: addr.to_string(),
            message: if e.is_timeout() {
                "no answer before the deadline".into()
            } else {
                root(&e)
            },
        })?;
        let bytes = answer(addr, resp).await?;
        serde_json::from_slice(&bytes).map_err(|e| ClientError::Decode {
            addr: addr.to_string(),
            message: e.to_string(),
        })
    }

    /// Runs a domain procedure on the database `db` hosted by the node at `addr`.
    pub async fn call<T: DeserializeOwned, A: Serialize>(
        &self,
        addr: &str,
        db: &str,
        procedure: &str,
        args: &A,
    ) -> Result<CallAnswer<T>, ClientError> {
        let body = serde_json::json!({ "procedure": procedure, "args": args });
        let req = self
            .http
            .post(format!("http://{addr}/internal/v1/db/{db}/call"))
            .json(&body);
        self.send(addr, req, None).await
    }

    /// Events of `db` after `after` (or, with a negative `after`, where the feed stands),
    /// waiting up to `wait_ms` for some.
    pub async fn feed(
        &self,
        addr: &str,
        db: &str,
        after: i64,
        wait_ms: u64,
    ) -> Result<serde_json::Value, ClientError> {
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
    })?;
    if status.is_success() {
        return Ok(bytes);
    }
    let body = serde_json::from_slice::<ErrorEnvelope>(&bytes)
        .map(|e| e.error)
        .unwrap_or_else(|_| ErrorBody {
            code: "upstream".into(),
            message: format!(
                "{addr} answered {status}: {}",
                String::from_utf8_lossy(&bytes)
            ),
        });
    Err(ClientError::Api {
        status: status.as_u16(),
        body,
    })
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
