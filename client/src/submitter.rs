//! One HTTP/1.1 keep-alive connection to one master, for `POST /tasks` back to back.
//!
//! The load generator submits thousands of tasks a second from one thread; through
//! reqwest each submission also parses a URL, checks a connection out of a shared pool
//! and back, and builds a header map, which together cost about as much as the HTTP work
//! itself. A submitter owns its socket and sends a fixed request line and headers, so the
//! per-task cost is the JSON body, one write and one read. Answers are read exactly as
//! [`MasterClient::submit`](crate::MasterClient::submit) reads them.

use std::time::Duration;

use common::{auth::Token, protocol::Variables};
use http_body_util::BodyExt;
use hyper::{
    Request,
    client::conn::http1::{self, SendRequest},
    header::{self, HeaderValue},
};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use crate::{ClientError, NewTaskBody, Submitted, api_error};

const CALL: &str = "POST /tasks";

/// A dedicated submit connection; dialled on first use and again after it broke.
pub struct Submitter {
    /// `host:port` of the master.
    address: String,
    host: HeaderValue,
    authorization: Option<HeaderValue>,
    /// Bound on one submission, connecting included.
    timeout: Duration,
    connection: Option<SendRequest<String>>,
}

impl Submitter {
    /// A submitter to the master at `base` (`http://host:port`), with the bearer token
    /// when one is set. Nothing is dialled yet.
    pub fn new(base: &str, token: &Token, timeout: Duration) -> Result<Self, ClientError> {
        let address = base
            .strip_prefix("http://")
            .map(|rest| rest.trim_end_matches('/'))
            .filter(|address| !address.is_empty() && !address.contains('/'))
            .ok_or_else(|| ClientError::Connection(format!("{base}: a submitter needs http://host:port")))?;
        let host = HeaderValue::from_str(address)
            .map_err(|error| ClientError::Connection(format!("{base}: {error}")))?;
        Ok(Self {
            address: address.to_owned(),
            host,
            authorization: token.header_value(),
            timeout,
            connection: None,
        })
    }

    /// `POST /tasks`, as [`MasterClient::submit`](crate::MasterClient::submit) sends it.
    /// A broken connection is reported, never retried: the master may have taken the
    /// task (the next call dials again).
    pub async fn submit(
        &mut self,
        expression: &str,
        variables: &Variables,
        delay_ms: i64,
    ) -> Result<Submitted, ClientError> {
        let body = NewTaskBody { expression, variables, delay_ms };
        let body = serde_json::to_string(&body)
            .map_err(|error| ClientError::Connection(format!("cannot encode the task: {error}")))?;
        match tokio::time::timeout(self.timeout, self.send(body)).await {
            Ok(answer) => answer,
            Err(_) => {
                self.connection = None;
                Err(ClientError::Connection(format!("{CALL}: no answer within {:?}", self.timeout)))
            }
        }
    }

    async fn send(&mut self, body: String) -> Result<Submitted, ClientError> {
        let mut sender = match self.connection.take() {
            Some(sender) => sender,
            None => self.connect().await?,
        };
        // The connection takes the next request only once it has finished the last
        // answer; one the master closed meanwhile is dialled again (nothing was sent).
        if sender.ready().await.is_err() {
            sender = self.connect().await?;
            sender.ready().await.map_err(broken)?;
        }
        let mut request = Request::post("/tasks")
            .header(header::HOST, self.host.clone())
            .header(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
        if let Some(authorization) = &self.authorization {
            request = request.header(header::AUTHORIZATION, authorization.clone());
        }
        let request = request.body(body).map_err(|error| ClientError::Connection(error.to_string()))?;
        let response = sender.send_request(request).await.map_err(broken)?;
        let status = response.status();
        let body = response.into_body().collect().await.map_err(broken)?.to_bytes();
        // Only a whole answer leaves the connection fit for the next request.
        self.connection = Some(sender);
        if !status.is_success() {
            return Err(api_error(CALL, status, &String::from_utf8_lossy(&body)));
        }
        serde_json::from_slice(&body)
            .map_err(|error| ClientError::Connection(format!("{CALL}: unreadable answer: {error}")))
    }

    async fn connect(&self) -> Result<SendRequest<String>, ClientError> {
        let stream = TcpStream::connect(&self.address)
            .await
            .map_err(|error| ClientError::Connection(format!("{}: {error}", self.address)))?;
        stream.set_nodelay(true).map_err(|error| ClientError::Connection(error.to_string()))?;
        let (sender, connection) = http1::handshake(TokioIo::new(stream)).await.map_err(broken)?;
        // Ends when the sender is dropped or the master closes the socket; either way
        // the sender then reads as closed, and the next submission dials again.
        tokio::spawn(async move {
            let _ = connection.await;
        });
        Ok(sender)
    }
}

fn broken(error: hyper::Error) -> ClientError {
    ClientError::Connection(format!("{CALL}: {error}"))
}
